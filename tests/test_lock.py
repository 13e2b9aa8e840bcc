"""One generation job per store: the job lock on every backend."""

from __future__ import annotations

import json
import time

import pytest

from actstore import JobLock, StoreBusyError
from actstore.location import Location


def test_second_job_is_refused_until_the_first_releases(store_url: str) -> None:
    loc = Location.from_url(store_url)
    first = JobLock(loc, "job-a")
    first.acquire()
    with pytest.raises(StoreBusyError, match=r"job 'job-a'.*Wait for it"):
        JobLock(loc, "job-b").acquire()
    with pytest.raises(StoreBusyError):  # a live lock is never broken, even when asked
        JobLock(loc, "job-b").acquire(break_stale=True)
    first.release()
    with JobLock(loc, "job-b"):
        assert loc.get_json(JobLock.KEY)["attributes"]["job"] == "job-b"
    assert not loc.exists(JobLock.KEY)


def test_stale_lock_of_a_dead_job_is_taken_over_only_when_asked(store_url: str) -> None:
    loc = Location.from_url(store_url)
    dead = {"zarr_format": 3, "node_type": "group",
            "attributes": {"job": "dead", "host": "h", "pid": 1, "started_at": 0.0,
                           "heartbeat_at": time.time() - 3600}}
    loc.put_exclusive(JobLock.KEY, json.dumps(dead).encode())
    with pytest.raises(StoreBusyError, match="looks dead"):
        JobLock(loc, "new").acquire()
    lock = JobLock(loc, "new")
    lock.acquire(break_stale=True)
    assert loc.get_json(JobLock.KEY)["attributes"]["job"] == "new"
    lock.release()


def test_heartbeat_keeps_the_lock_fresh(store_url: str) -> None:
    loc = Location.from_url(store_url)
    with JobLock(loc, "beating", stale_after_s=0.4):
        first = loc.get_json(JobLock.KEY)["attributes"]["heartbeat_at"]
        deadline = time.time() + 5
        while time.time() < deadline:
            loc.invalidate()
            if loc.get_json(JobLock.KEY)["attributes"]["heartbeat_at"] > first:
                break
            time.sleep(0.05)
        else:
            pytest.fail("heartbeat never refreshed the lock")
        time.sleep(0.5)  # longer than stale_after_s: only a live heartbeat keeps it fresh
        with pytest.raises(StoreBusyError, match="Wait for it"):
            JobLock(loc, "other", stale_after_s=0.4).acquire(break_stale=True)
