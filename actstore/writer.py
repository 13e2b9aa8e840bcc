"""Writing a store: one whole shard at a time, committed by a marker written after its data.

Protocol for one shard (what makes Ray retries idempotent and concurrent writers safe):
1. lease: create `leases/shard-N/zarr.json` exclusively; a second writer of the shard is refused
   with the owner's name. A committed shard is refused outright: it is never rewritten.
2. write: each array's shard is encoded in memory and published with one atomic put (rename on
   local disk after fsync, a single PUT on object stores): readers never see a torn shard.
3. commit: create `commits/shard-N/zarr.json` exclusively, holding each object's size and crc32c
   and the shard's statistics; then drop the lease. Data is durable before the marker exists, so
   a marker always means "all of this shard is there".
A crashed writer leaves a lease and maybe objects but no marker: the shard is not done, and the
job that knows the writer is dead breaks the lease and retries the shard elsewhere.
One job at a time: `JobLock` (`lock/zarr.json`, a lease renewed by a heartbeat) refuses a
second job while the first is alive.
"""

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

import numpy as np
from numpy.typing import NDArray

from actstore import format as fmt
from actstore.errors import (
    FormatError,
    ShardCommittedError,
    ShardLeaseError,
    StoreBusyError,
)
from actstore.location import Location, access_errors
from actstore.reaper import proc_stat
from actstore.shard_codec import run_in_pool
from actstore.stats import HookStats
from actstore.store import ActivationStore, RowIndex, disk_full


def _group_bytes(attributes: Mapping[str, Any]) -> bytes:
    """A zarr v3 group's metadata: markers are groups so plain zarr can read them."""
    return json.dumps({"zarr_format": 3, "node_type": "group",
                       "attributes": dict(attributes)}, indent=1).encode()


def _read_attrs(loc: Location, key: str) -> dict[str, Any] | None:
    try:
        attrs: dict[str, Any] = loc.get_json(key)["attributes"]
        return attrs
    except FileNotFoundError:
        return None


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


class ShardWriter:
    """Writes and commits one shard. Use as a context manager: the lease is dropped on error."""

    def __init__(self, store: ActivationStore, shard: int, writer_id: str) -> None:
        self.store, self.shard, self.writer_id = store, shard, writer_id
        self.rows = store.layout.shard_rows_range(shard)
        self._objects: dict[str, dict[str, int]] = {}
        self._stats: dict[str, dict[str, Any]] = {}
        self._leased = False

    @property
    def _lease_key(self) -> str:
        return fmt.marker_key(fmt.LEASES, self.shard)

    def __enter__(self) -> ShardWriter:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._leased:
            self.release()

    def acquire(self) -> None:
        """Take the shard's lease, or raise naming who holds it / that it is committed."""
        loc = self.store.location
        if loc.exists(fmt.marker_key(fmt.COMMITS, self.shard)):
            raise ShardCommittedError(f"shard {self.shard} of {self.store.url} is committed")
        lease = {"writer": self.writer_id, "acquired_at": time.time(), **_owner()}
        try:
            loc.put_exclusive(self._lease_key, _group_bytes(lease))
        except FileExistsError:
            held = _read_attrs(loc, self._lease_key) or {}
            raise ShardLeaseError(
                f"shard {self.shard} of {self.store.url} is being written by writer "
                f"{held.get('writer')!r} (host {held.get('host')}, pid {held.get('pid')}); "
                "if it is dead, break its lease with ActivationStore.break_lease") from None
        self._leased = True

    def release(self) -> None:
        """Drop the lease if it is still ours (after a commit, or to give the shard up)."""
        held = _read_attrs(self.store.location, self._lease_key)
        if held is not None and held.get("writer") == self.writer_id:
            self.store.location.delete(self._lease_key)
        self._leased = False

    def write(self, activations: Mapping[str, Any], index: RowIndex) -> None:
        """Write every hook's rows and the row index of the whole shard, in one durable batch."""
        start, stop = self.rows
        n = stop - start
        if set(activations) != set(self.store.hooks):
            raise FormatError(f"shard needs hooks {list(self.store.hooks)}, "
                              f"got {sorted(activations)}")
        arrays: dict[str, NDArray[Any]] = {}
        for hook, values in activations.items():
            stored = fmt.to_storage(values, self.store.spec.dtype)
            want = (n, self.store.layout.d_model[hook])
            if stored.shape != want:
                raise FormatError(f"hook {hook}: shard {self.shard} needs shape {want}, "
                                  f"got {stored.shape}")
            arrays[fmt.activation_path(hook)] = stored
        for name, values in zip(fmt.INDEX_ARRAYS, index, strict=True):
            column = np.asarray(values, dtype=fmt.INDEX_ARRAYS[name])
            if column.shape != (n,):
                raise FormatError(f"index {name}: shard {self.shard} needs {n} rows, "
                                  f"got shape {column.shape}")
            arrays[fmt.index_path(name)] = column
        dtype = self.store.spec.dtype
        stats = {hook: run_in_pool(HookStats.of, fmt.from_storage(arrays[fmt.activation_path(
            hook)], dtype)) for hook in activations}  # overlaps the encoding below
        blobs = {fmt.shard_key(path, self.shard): self.store.encoders[path].encode(data)
                 for path, data in arrays.items()}
        tails = {fmt.shard_key(path, self.shard): self.store.decoders[path].index_nbytes
                 for path in arrays}
        self._stats = {hook: f.result().to_dict() for hook, f in stats.items()}
        # Checked right before publishing, so a writer whose lease was broken (declared dead)
        # stops as soon as it wakes up instead of overwriting its successor's shard.
        self._check_lease()
        with disk_full(self.store.url, f"shard {self.shard}"):
            self.store.location.put_many(blobs)
        # The index's crc lets a reader that fetches only some chunks check, with the index it
        # reads anyway, that the object is the one committed (not another shard's).
        self._objects = {k: {"size": len(b), "crc32c": fmt.checksum(b),
                             "index_crc32c": fmt.index_checksum(b[-tails[k]:])}
                         for k, b in blobs.items()}

    def commit(self) -> None:
        """Publish the commit marker (exclusively), then drop the lease."""
        loc = self.store.location
        expected = len(self.store.hooks) + len(fmt.INDEX_ARRAYS)
        if len(self._objects) != expected:
            raise FormatError(f"shard {self.shard}: commit before all arrays were written")
        self._check_lease()
        record = {"shard": self.shard, "rows": list(self.rows), "writer": self.writer_id,
                  "committed_at": time.time(), "objects": self._objects, "stats": self._stats,
                  **_owner()}
        try:
            loc.put_exclusive(fmt.marker_key(fmt.COMMITS, self.shard), _group_bytes(record))
        except FileExistsError:
            raise ShardCommittedError(
                f"shard {self.shard} of {self.store.url} was committed by another writer"
            ) from None
        self.release()

    def _check_lease(self) -> None:
        held = _read_attrs(self.store.location, self._lease_key)
        if held is None or held.get("writer") != self.writer_id:
            self._leased = False
            raise ShardLeaseError(
                f"writer {self.writer_id!r} lost its lease on shard {self.shard} of "
                f"{self.store.url} (now held by {(held or {}).get('writer')!r})")


def write_shard(store: ActivationStore, shard: int, activations: Mapping[str, Any],
                index: RowIndex, writer_id: str) -> None:
    """Lease, write and commit one shard in one call."""
    with ShardWriter(store, shard, writer_id) as w:
        w.write(activations, index)
        w.commit()


def break_lease(store: ActivationStore, shard: int) -> dict[str, Any] | None:
    """Remove a shard's lease (its writer is known dead); returns what the lease said."""
    key = fmt.marker_key(fmt.LEASES, shard)
    held = _read_attrs(store.location, key)
    store.location.delete(key)
    return held


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux), or None if there is no such
    process. A pid that was reused by another process has another start time."""
    fields = proc_stat(pid)
    if fields is not None:
        return int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return -1  # alive, another user's
    return -1  # alive; its start time is unknown here


def holder_is_dead(held: Mapping[str, Any]) -> bool:
    """True when a lock or lease names a process on this host that no longer exists (or whose
    pid now belongs to another process)."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    now = _start_time(int(held["pid"]))
    if now is None:
        return True
    started = held.get("pid_start")
    return started is not None and now not in (-1, started)


def read_lock(location: Location) -> dict[str, Any] | None:
    """What the job lock of a store (or run folder) says, or None when nobody holds it."""
    return _read_attrs(location, JobLock.KEY)


def this_process() -> dict[str, Any]:
    """Host, pid and pid start time: enough for `holder_is_dead` to tell when we are gone."""
    return {**_owner(), "pid_start": _start_time(os.getpid())}


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
                held = _read_attrs(self.location, self.KEY)
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
        now = _read_attrs(self.location, self.KEY)
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
        held = _read_attrs(self.location, self.KEY)
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
        return _group_bytes({"job": self.job_id, "started_at": self._started_at,
                             "heartbeat_at": time.time(), **self._holder})

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 5):
            try:
                held = _read_attrs(self.location, self.KEY)
                if held is None or held.get("job") != self.job_id:
                    return  # taken over: never overwrite another job's lock
                self.location.put(self.KEY, self._payload())
            except Exception as e:  # a passing fault (S3 hiccup): beat again next time
                self.log(f"{self.what} {self.location.url}: lock heartbeat failed "
                         f"({type(e).__name__}: {e}); retrying")
