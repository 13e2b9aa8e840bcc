"""The driver's loop over a store's missing shards, whatever runs them: Ray actors
(`ray_pool.RayPool`) or `ShardWorker`s in this process (`local.LocalPool`, for local jobs too
small to repay Ray's start-up, and for machines without Ray).

Each worker gets two shards at a time, so one computes while the other compresses and uploads,
and only once it is ready (its model loaded): a worker that cannot be placed holds no shard. A
shard whose write failed on a passing fault (an S3 hiccup) goes again after an exponential
backoff; when a worker dies, its in-flight shards are queued again for the others, and a
replacement starts if the cluster has room for one. A shard that keeps failing stops the run
after `max_retries`; a real error (bad data, full disk) stops it at once; so does having no
worker left and no room for one (a lost node), in one line, once the cluster says so.
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from typing import Any

from tqdm import tqdm

from actstore.generate.executors.base import IN_FLIGHT_PER_WORKER
from actstore.store.activation_store import ActivationStore
from actstore.store.errors import ShardCommittedError, StoreError, transient
from actstore.store.writer import break_lease

#: Seconds between looks at the cluster while no worker is ready (a node's death takes Ray's
#: health checks a while to notice; this only bounds how late the run notices after that).
POLL_S = 5.0
#: Seconds between the lines that say the run waits for workers to start.
REPORT_S = 60.0


class WorkerDiedError(Exception):
    """The worker running a shard is gone (process killed, node lost)."""


class NoWorkerError(StoreError):
    """Every worker is gone and the cluster has no room for another (nodes lost)."""


class ShardPool(ABC):
    """The bookkeeping every executor shares: queue, in-flight shards, retries, progress."""

    def __init__(self, store: ActivationStore, n_workers: int, max_retries: int,
                 start_s: float = 900.0) -> None:
        self.store, self.max_retries, self.start_s = store, max_retries, start_s
        self.workers: dict[int, Any] = {}
        self.ready: set[int] = set()  # keys of the workers that can take shards
        self.starting: dict[Any, int] = {}  # readiness handle -> worker key
        self.since: dict[int, float] = {}  # a starting worker's key -> when it was asked
        self.reported = 0.0  # the start wait (seconds) last reported
        self.next_id, self.lost, self.died_starting = 0, 0, 0
        self.in_flight: dict[Any, tuple[int, int]] = {}  # handle -> (worker key, shard)
        self.retries: Counter[int] = Counter()
        self.delayed: list[tuple[float, int]] = []  # (when, shard): retries after a backoff
        for _ in range(n_workers):
            self._add_worker()

    @abstractmethod
    def _start(self) -> Any:
        """A new worker."""

    def _ready(self, worker: Any) -> Any | None:  # noqa: ARG002 (Ray's needs it)
        """A handle that finishes when `worker` can take shards (None: it can now)."""
        return None

    def _room(self) -> tuple[int | None, str]:
        """How many workers the cluster can hold now (None: no limit known), and in words."""
        return None, ""

    @abstractmethod
    def _submit(self, worker: Any, shard: int) -> Any:
        """Start `shard` on `worker`; a handle for `_wait` and `_result`."""

    @abstractmethod
    def _wait(self, handles: list[Any], timeout: float) -> list[Any]:
        """The handles among `handles` that finished within `timeout` seconds (at least one
        unless the time ran out)."""

    @abstractmethod
    def _result(self, handle: Any) -> int:
        """Rows committed, or the shard's error; `WorkerDiedError` when its worker died."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop every worker."""

    @abstractmethod
    def _stop(self, worker: Any) -> None:
        """Stop one worker that never became ready."""

    def run(self, shards: list[int], *, progress: bool, desc: str) -> None:
        """Commit every shard in `shards`; returns when all are committed or raises. The
        workers are stopped either way."""
        total = sum(b - a for a, b in map(self.store.layout.shard_rows_range, shards))
        queue = deque(shards)
        try:
            with tqdm(total=total, unit="tok", unit_scale=True, disable=not progress,
                      desc=desc) as bar:
                while True:
                    self._release_due(queue)
                    for k in sorted(self.ready):  # a requeued shard goes to whoever has room
                        self._feed(k, queue)
                    if not (self.in_flight or self.delayed or queue):
                        return
                    if not (self.ready or self.in_flight):
                        self._check_room(len(queue) + len(self.delayed))
                    self._watch_starting()
                    self._wait_once(queue, bar)
        finally:
            self.shutdown()

    def _wait_once(self, queue: deque[int], bar: tqdm[Any]) -> None:
        """Sleep until a result, a worker's readiness or the next due retry, then take it."""
        now = time.monotonic()
        wait = max(0.0, min((t for t, _ in self.delayed), default=now + 60.0) - now)
        if not self.ready:
            wait = min(wait, POLL_S)  # look at the cluster again soon
        handles = [*self.in_flight, *self.starting]
        if not handles:
            time.sleep(wait)
            return
        for handle in self._wait(handles, wait):
            if handle in self.starting:
                self._started(handle)
            else:
                self._collect(handle, queue, bar)

    def _collect(self, handle: Any, queue: deque[int], bar: tqdm[Any]) -> None:
        key, shard = self.in_flight.pop(handle)
        try:
            bar.update(self._result(handle))
        except WorkerDiedError as e:
            self._worker_died(key, shard, queue, e)
        except ShardCommittedError:
            pass  # done by someone else, with the same rows
        except Exception as e:
            if not transient(e):
                raise  # a real error (bad data, full disk): stop
            self._retry_later(shard, e)

    def _retry_later(self, shard: int, error: BaseException) -> None:
        self.retries[shard] += 1
        if self.retries[shard] > self.max_retries:
            error.add_note(f"shard {shard} failed {self.retries[shard]} times; rerun the same "
                           "command to resume")
            raise error
        delay = min(30.0, 2.0 ** (self.retries[shard] - 1))
        print(f"shard {shard}: {type(error).__name__}: {error}; retry "
              f"{self.retries[shard]}/{self.max_retries} in {delay:g}s", file=sys.stderr)
        self.delayed.append((time.monotonic() + delay, shard))

    def _release_due(self, queue: deque[int]) -> None:
        """Queue the delayed shards whose time has come (their writer gave the lease up, but
        its release may itself have failed in the fault: break it)."""
        now = time.monotonic()
        for due in [d for d in self.delayed if d[0] <= now]:
            try:
                break_lease(self.store, due[1])
            except Exception as e:
                if not transient(e):
                    raise
                self._retry_later(due[1], e)
            else:
                queue.appendleft(due[1])
            self.delayed.remove(due)

    def _feed(self, key: int, queue: deque[int]) -> None:
        busy = sum(1 for k, _ in self.in_flight.values() if k == key)
        while queue and busy < IN_FLIGHT_PER_WORKER:
            shard = queue.popleft()
            self.in_flight[self._submit(self.workers[key], shard)] = (key, shard)
            busy += 1

    def _worker_died(self, key: int, shard: int, queue: deque[int], error: Exception) -> None:
        self.retries[shard] += 1
        if self.retries[shard] > self.max_retries:
            raise RuntimeError(f"shard {shard} failed {self.retries[shard]} times: its "
                               f"workers died ({error})") from error
        break_lease(self.store, shard)  # its writer is dead: the shard may be taken again
        queue.appendleft(shard)
        self._lose(key, error)

    def _add_worker(self) -> None:
        key, self.next_id = self.next_id, self.next_id + 1
        self.workers[key] = worker = self._start()
        handle = self._ready(worker)
        if handle is None:
            self.ready.add(key)
        else:
            self.starting[handle] = key
            self.since[key] = time.monotonic()

    def _started(self, handle: Any) -> None:
        key = self.starting.pop(handle)
        del self.since[key]
        try:
            self._result(handle)
        except WorkerDiedError as e:  # its node went, or it could not load the model
            self._failed_start(key, e)
        else:
            self.ready.add(key)

    def _failed_start(self, key: int, error: Exception) -> None:
        self.died_starting += 1
        if self.died_starting > self.max_retries:
            raise RuntimeError(f"{self.died_starting} workers failed to start: {error}") \
                from error
        self._lose(key, error)

    def _watch_starting(self) -> None:
        """While no worker is ready, say every minute what the run waits for (workers being
        placed and loading the model: minutes on a saturated machine or a busy cluster, when
        nothing else would show); a worker not ready after `start_s` is stopped and counts as
        failed to start, so the wait is bounded whatever holds it (no room that Ray counts as
        free, a model load that hangs)."""
        if not self.starting:
            return
        now = time.monotonic()
        waited = now - min(self.since[k] for k in self.starting.values())
        if not self.ready and waited >= self.reported + REPORT_S:
            self.reported = waited
            print(f"waiting {waited:.0f}s for {len(self.starting)} worker(s) to start (to be "
                  "placed by Ray and load the model; a busy machine or cluster slows this; "
                  f"--worker-start-s {self.start_s:g} bounds it)", file=sys.stderr)
        for handle, key in list(self.starting.items()):
            if now - self.since[key] > self.start_s:
                del self.starting[handle], self.since[key]
                self._stop(self.workers[key])
                self._failed_start(key, TimeoutError(
                    f"a worker did not start within --worker-start-s {self.start_s:g}"))

    def _lose(self, key: int, error: Exception) -> None:
        """Forget a dead worker (once: its two shards report it twice); replace it if the
        cluster has room, else the others go on without it."""
        if self.workers.pop(key, None) is None:
            return
        self.ready.discard(key)
        self.lost += 1
        room, words = self._room()
        if room is None or len(self.workers) < room:
            self._add_worker()
        else:
            print(f"a worker was lost ({type(error).__name__}); no room for a replacement "
                  f"({words}): {len(self.workers)} go on", file=sys.stderr)

    def _check_room(self, remaining: int) -> None:
        """No worker is ready and none is busy: wait for those starting while the cluster
        can hold one; with no room left at all, stop in one line (a rerun resumes)."""
        room, words = self._room()
        if room is None or room > 0:
            if not self.workers:
                self._add_worker()  # room came back
            return
        raise NoWorkerError(f"no worker left for the {remaining} remaining shards: "
                            f"{self.lost} lost, and {words}; add nodes (or wait for them) "
                            "and rerun the same command to resume")
