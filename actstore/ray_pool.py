"""Run shards on a pool of Ray actors: one per GPU (or N CPU actors), elastic and idempotent.

Each actor loads the model once and takes shards from the driver's queue, two at a time so one
computes while the other compresses and uploads. When an actor dies (process killed, node
lost), the driver breaks the leases of its in-flight shards, queues them again and starts a
replacement; a shard that keeps killing workers fails the run after `max_retries`.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from actstore.errors import ShardCommittedError, transient
from actstore.store import ActivationStore
from actstore.worker import ShardWorker
from actstore.writer import break_lease, this_process

if TYPE_CHECKING:
    from actstore.generate import GenerateConfig
    from actstore.ray_cluster import WorkerPlan

IN_FLIGHT_PER_WORKER = 2
#: Environment a worker needs that a remote cluster does not have: credentials, endpoints,
#: offline switches.
FORWARDED_ENV = ("AWS_", "GOOGLE_", "HF_", "TRANSFORMERS_", "FSSPEC_")


def worker_runtime_env() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    return {"env_vars": env}


def run_shards(cfg: GenerateConfig, store: ActivationStore, shards: list[int],
               job_id: str, plan: WorkerPlan) -> None:
    """Commit every shard in `shards` on the connected cluster (`connect`); returns when all
    are committed or raises."""
    import ray

    from actstore.generate import device_and_dtype

    if not shards:
        return
    device, dtype = device_and_dtype(cfg)
    actor_cls = ray.remote(ShardWorker).options(
        num_gpus=1 if device == "cuda" else 0, num_cpus=plan.cpus,
        max_concurrency=IN_FLIGHT_PER_WORKER, max_restarts=0, runtime_env=worker_runtime_env())

    def start() -> Any:
        return actor_cls.remote(store.url, model=cfg.model, revision=cfg.revision,
                                model_dtype=dtype, device=device, batch_size=cfg.batch_size,
                                job_id=job_id, storage_options=cfg.storage_options,
                                driver=this_process(), threads=plan.threads)

    n_workers = min(plan.workers, len(shards))
    pool = _Pool(store, start, n_workers, cfg.max_retries)
    total = sum(b - a for a, b in map(store.layout.shard_rows_range, shards))
    try:
        with tqdm(total=total, unit="tok", unit_scale=True, disable=not cfg.progress,
                  desc=f"generate {store.key}") as bar:
            pool.run(deque(shards), bar)
    finally:
        pool.shutdown()


class _Pool:
    """The driver's bookkeeping: actors, queue, in-flight shards, retries."""

    def __init__(self, store: ActivationStore, start: Any, n_workers: int,
                 max_retries: int) -> None:
        self.store, self.start, self.max_retries = store, start, max_retries
        self.actors: dict[int, Any] = {i: start() for i in range(n_workers)}
        self.next_id = n_workers
        self.in_flight: dict[Any, tuple[int, int]] = {}
        self.retries: Counter[int] = Counter()
        self.delayed: list[tuple[float, int]] = []  # (when, shard): retries after a backoff

    def run(self, queue: deque[int], bar: tqdm[Any]) -> None:
        import ray

        while True:
            self._release_due(queue)
            for k in list(self.actors):  # a requeued shard goes to whoever has room
                self._feed(k, queue)
            if not (self.in_flight or self.delayed):
                return
            wait = max(0.0, min((t for t, _ in self.delayed), default=60.0) - time.monotonic())
            if not self.in_flight:
                time.sleep(wait)
                continue
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=wait)
            for ref in ready:
                key, shard = self.in_flight.pop(ref)
                try:
                    bar.update(ray.get(ref))
                except ray.exceptions.RayActorError as e:
                    self._worker_died(key, shard, queue, e)
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, ShardCommittedError):
                        continue
                    if not transient(e.cause):
                        raise e.cause from e  # a real error (bad data, full disk): stop
                    self._retry_later(shard, e.cause)

    def _retry_later(self, shard: int, error: BaseException) -> None:
        """A shard whose write failed on a passing fault (an S3 hiccup) goes again after an
        exponential backoff, up to `max_retries` times."""
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
            self.in_flight[self.actors[key].process.remote(shard)] = (key, shard)
            busy += 1

    def _worker_died(self, key: int, shard: int, queue: deque[int], error: Exception) -> None:
        self.retries[shard] += 1
        if self.retries[shard] > self.max_retries:
            raise RuntimeError(f"shard {shard} failed {self.retries[shard]} times: its "
                               f"workers died ({error})") from error
        break_lease(self.store, shard)  # its writer is dead: the shard may be taken again
        queue.appendleft(shard)
        if self.actors.pop(key, None) is not None:  # replace the dead actor once
            self.actors[self.next_id] = self.start()
            self.next_id += 1

    def shutdown(self) -> None:
        import ray

        for actor in self.actors.values():
            ray.kill(actor)
