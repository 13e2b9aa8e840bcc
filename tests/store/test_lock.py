"""One job per store: the job lock (a lease renewed by a heartbeat) on every backend."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from actstore import JobLock, StoreBusyError
from actstore.store.location import Location


def plant(loc: Location, **attrs: object) -> None:
    """A lock left by another job, as it would lie in the store."""
    held = {"job": "old", "host": "elsewhere", "pid": 1, "started_at": 0.0,
            "heartbeat_at": time.time(), **attrs}
    loc.put_exclusive(JobLock.KEY, json.dumps({"zarr_format": 3, "node_type": "group",
                                               "attributes": held}).encode())


def holder(loc: Location) -> str:
    loc.invalidate()
    return str(loc.get_json(JobLock.KEY)["attributes"]["job"])


def test_second_job_is_refused_until_the_first_releases(store_url: str) -> None:
    loc = Location.from_url(store_url)
    first = JobLock(loc, "job-a")
    first.acquire()
    with pytest.raises(StoreBusyError, match=r"job 'job-a'.*alive.*Wait for it"):
        JobLock(loc, "job-b").acquire()
    first.release()
    with JobLock(loc, "job-b"):
        assert holder(loc) == "job-b"
    assert not loc.exists(JobLock.KEY)


def test_expired_lease_of_another_host_is_taken_over_and_said(store_url: str) -> None:
    loc = Location.from_url(store_url)
    plant(loc, heartbeat_at=time.time() - 3600)
    said: list[str] = []
    with JobLock(loc, "new", log=said.append):
        assert holder(loc) == "new"
    assert len(said) == 1
    assert "taking over the lock of job 'old' on elsewhere" in said[0]
    assert "last heartbeat was 3600s ago" in said[0]


def test_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(store_url: str) -> None:
    loc = Location.from_url(store_url)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    plant(loc, host=socket.gethostname(), pid=int(gone.stdout))  # heartbeat fresh
    said: list[str] = []
    with JobLock(loc, "new", log=said.append):
        assert holder(loc) == "new"
    assert f"pid {int(gone.stdout)} on this host) no longer exists" in said[0]


def test_simultaneous_take_overs_let_exactly_one_job_hold_the_lock(store_url: str) -> None:
    loc = Location.from_url(store_url)
    plant(loc, heartbeat_at=time.time() - 3600)
    won, refused = [], []
    start = threading.Barrier(6)

    def contend(i: int) -> None:
        lock = JobLock(Location.from_url(store_url), f"job-{i}", log=lambda _: None)
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except StoreBusyError:
            refused.append(i)
    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, [w.job_id for w in won]
    assert len(refused) == 5
    assert holder(loc) == won[0].job_id
    won[0].release()


def test_heartbeat_keeps_a_live_lock_and_it_is_never_taken(store_url: str) -> None:
    loc = Location.from_url(store_url)
    # A lease of 2 s, beaten every 0.4 s: a heartbeat late by a loaded machine (or a slow
    # S3 answer) by more than a second would let it be taken, and the test would fail.
    with JobLock(loc, "beating", lease_s=2.0):
        first = loc.get_json(JobLock.KEY)["attributes"]["heartbeat_at"]
        deadline = time.time() + 60  # a refresh comes within lease/5 s, idle
        while time.time() < deadline:
            loc.invalidate()
            if loc.get_json(JobLock.KEY)["attributes"]["heartbeat_at"] > first:
                break
            time.sleep(0.05)
        else:
            pytest.fail("heartbeat never refreshed the lock")
        time.sleep(2.4)  # longer than the lease: only a live heartbeat keeps it
        with pytest.raises(StoreBusyError, match="Wait for it"):
            JobLock(loc, "other", lease_s=2.0).acquire()
        assert holder(loc) == "beating"
