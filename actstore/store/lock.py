"""One job at a time per store (or per training run folder): `JobLock`, an exclusive lock
object (`lock/zarr.json`) kept alive by a heartbeat, and the liveness rules that let a dead
holder's lock or shard lease be taken over."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from actstore.store import format as fmt
from actstore.store import processes
from actstore.store.errors import StoreBusyError
from actstore.store.location import Location, access_errors


def group_bytes(attributes: Mapping[str, Any]) -> bytes:
    """A zarr v3 group's metadata: markers are groups so plain zarr can read them."""
    return json.dumps({"zarr_format": 3, "node_type": "group",
                       "attributes": dict(attributes)}, indent=1).encode()


def read_attrs(loc: Location, key: str) -> dict[str, Any] | None:
    try:
        attrs: dict[str, Any] = loc.get_json(key)["attributes"]
        return attrs
    except FileNotFoundError:
        return None


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def holder_is_dead(held: Mapping[str, Any]) -> bool:
    """True when a lock or lease names a process on this host that no longer exists (or whose
    pid now belongs to another process)."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    now = processes.start_time(int(held["pid"]))
    if now is None:
        return True
    started = held.get("pid_start")
    return started is not None and now not in (-1, started)


def read_lock(location: Location) -> dict[str, Any] | None:
    """What the job lock of a store (or run folder) says, or None when nobody holds it."""
    return read_attrs(location, JobLock.KEY)


def this_process() -> dict[str, Any]:
    """Host, pid and pid start time: enough for `holder_is_dead` to tell when we are gone."""
    return {**owner(), "pid_start": processes.start_time(os.getpid())}


class JobLock:
    """One job per store (or per training run folder): an exclusive lock object, refreshed by
    a heartbeat.

    It is a lease: a lock whose heartbeat is older than `lease_s` belongs to a job that is gone
    (killed, its machine lost) and is taken over, as is at once a lock held by a process of
    this host that no longer exists. A live job's lock is never taken. Taking over is atomic:
    of several jobs that find the same expired lock, only the one that creates its exclusive
    take-over marker replaces it.
    """

    KEY = f"{fmt.LOCK}/{fmt.META}"

    def __init__(self, location: Location, job_id: str, lease_s: float = 15.0,
                 what: str = "store", log: Callable[[str], None] | None = None) -> None:
        self.location, self.job_id, self.lease_s = location, job_id, lease_s
        self.what = what
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = time.time()
        self._holder = this_process()  # fixed for the process: read /proc once, not per beat

    def acquire(self) -> None:
        """Take the lock, taking over a dead holder's; StoreBusyError while a live job has it."""
        for _ in range(5):  # each pass either takes the lock or finds a new holder
            try:
                with access_errors(self.location.url):
                    self.location.put_exclusive(self.KEY, self._payload())
            except FileExistsError:
                held = read_attrs(self.location, self.KEY)
                if held is None:
                    continue  # released meanwhile
                why = self._gone(held)
                if why is None:
                    raise self._busy(held) from None
                self._take_over(held, why)
                continue
            self._thread = threading.Thread(target=self._beat, name="actstore-lock",
                                            daemon=True)
            self._thread.start()
            return
        raise StoreBusyError(f"{self.what} {self.location.url}: could not take its lock "
                             "(other jobs keep taking it)")

    def _gone(self, held: Mapping[str, Any]) -> str | None:
        """Why the holder is gone, or None when it may be alive."""
        if holder_is_dead(held):
            return f"its process (pid {held.get('pid')} on this host) no longer exists"
        age = time.time() - float(held.get("heartbeat_at", 0.0))
        if age > self.lease_s:
            return f"its last heartbeat was {age:.0f}s ago (lease {self.lease_s:g}s)"
        return None

    def _take_over(self, held: Mapping[str, Any], why: str) -> None:
        """Replace a dead holder's lock, if we are the one job that wins its take-over."""
        marker = f"{fmt.LOCK}/takeover-{held.get('job')}-{held.get('heartbeat_at')}"
        try:
            self.location.put_exclusive(marker, self._payload())
        except FileExistsError:
            return  # another job is taking it over; the next pass sees who won
        now = read_attrs(self.location, self.KEY)
        if now is not None and (now.get("job"), now.get("heartbeat_at")) == (
                held.get("job"), held.get("heartbeat_at")):
            self.location.delete(self.KEY)
            self.log(f"{self.what} {self.location.url}: taking over the lock of job "
                     f"{held.get('job')!r} on {held.get('host')}: {why}")

    def _busy(self, held: Mapping[str, Any]) -> StoreBusyError:
        age = time.time() - float(held.get("heartbeat_at", 0.0))
        return StoreBusyError(
            f"{self.what} {self.location.url} is in use by job {held.get('job')!r} on "
            f"{held.get('host')} (pid {held.get('pid')}), alive: last heartbeat {age:.0f}s ago. "
            f"Wait for it to finish; if it is gone, its lock expires {self.lease_s:g}s after "
            "its last heartbeat and is then taken over.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = read_attrs(self.location, self.KEY)
        if held is not None and held.get("job") == self.job_id:
            self.location.delete(self.KEY)
        for name in self.location.list(fmt.LOCK):  # markers of take-overs, now moot
            if name.startswith("takeover-"):
                self.location.delete(f"{fmt.LOCK}/{name}")

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _payload(self) -> bytes:
        return group_bytes({"job": self.job_id, "started_at": self._started_at,
                             "heartbeat_at": time.time(), **self._holder})

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 5):
            try:
                held = read_attrs(self.location, self.KEY)
                if held is None or held.get("job") != self.job_id:
                    return  # taken over: never overwrite another job's lock
                self.location.put(self.KEY, self._payload())
            except Exception as e:  # a passing fault (S3 hiccup): beat again next time
                self.log(f"{self.what} {self.location.url}: lock heartbeat failed "
                         f"({type(e).__name__}: {e}); retrying")
