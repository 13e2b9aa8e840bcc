"""Run shards on a pool of Ray actors: one per GPU (or N CPU actors), elastic and idempotent.

Each actor loads the model once and takes shards from the driver's queue, two at a time so one
computes while the other compresses and uploads. When an actor dies (process killed, node
lost), the driver breaks the leases of its in-flight shards, queues them again and starts a
replacement; a shard that keeps killing workers fails the run after `max_retries`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from actstore.errors import ShardCommittedError
from actstore.store import ActivationStore
from actstore.worker import ShardWorker
from actstore.writer import break_lease

if TYPE_CHECKING:
    from actstore.generate import GenerateConfig

IN_FLIGHT_PER_WORKER = 2
#: Environment a worker needs that a remote cluster does not have: credentials, endpoints,
#: offline switches.
FORWARDED_ENV = ("AWS_", "GOOGLE_", "HF_", "TRANSFORMERS_", "FSSPEC_")


def _runtime_env() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    return {"env_vars": env}


def run_shards(cfg: GenerateConfig, store: ActivationStore, shards: list[int],
               job_id: str) -> None:
    """Commit every shard in `shards`; returns when all are committed or raises."""
    import ray

    from actstore.generate import default_workers, device_and_dtype

    if not shards:
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cfg.address or os.environ.get("RAY_ADDRESS"),
                 logging_level=logging.WARNING, include_dashboard=False,
                 runtime_env=_runtime_env())
    device, dtype = device_and_dtype(cfg)
    actor_cls = ray.remote(ShardWorker).options(
        num_gpus=1 if device == "cuda" else 0, num_cpus=cfg.cpus_per_worker,
        max_concurrency=IN_FLIGHT_PER_WORKER, max_restarts=0, runtime_env=_runtime_env())

    def start() -> Any:
        return actor_cls.remote(store.url, model=cfg.model, revision=cfg.revision,
                                model_dtype=dtype, device=device, batch_size=cfg.batch_size,
                                job_id=job_id, storage_options=cfg.storage_options)

    n_workers = min(cfg.workers or default_workers(device), len(shards))
    pool = _Pool(store, start, n_workers, cfg.max_retries)
    total = sum(b - a for a, b in map(store.layout.shard_rows_range, shards))
    try:
        with tqdm(total=total, unit="tok", unit_scale=True, disable=not cfg.progress,
                  desc=f"generate {store.key}") as bar:
            pool.run(deque(shards), bar)
    finally:
        pool.shutdown()
        if started_here:
            ray.shutdown()


class _Pool:
    """The driver's bookkeeping: actors, queue, in-flight shards, retries."""

    def __init__(self, store: ActivationStore, start: Any, n_workers: int,
                 max_retries: int) -> None:
        self.store, self.start, self.max_retries = store, start, max_retries
        self.actors: dict[int, Any] = {i: start() for i in range(n_workers)}
        self.next_id = n_workers
        self.in_flight: dict[Any, tuple[int, int]] = {}
        self.retries: Counter[int] = Counter()

    def run(self, queue: deque[int], bar: tqdm[Any]) -> None:
        import ray

        for key in list(self.actors):
            self._feed(key, queue)
        while self.in_flight:
            (ref,), _ = ray.wait(list(self.in_flight), num_returns=1)
            key, shard = self.in_flight.pop(ref)
            try:
                bar.update(ray.get(ref))
            except ray.exceptions.RayActorError as e:
                self._worker_died(key, shard, queue, e)
            except ray.exceptions.RayTaskError as e:
                if not isinstance(e.cause, ShardCommittedError):
                    raise e.cause from e  # a real error (bad data, full disk): stop the run
            for k in list(self.actors):  # a requeued shard goes to whoever has room
                self._feed(k, queue)

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
