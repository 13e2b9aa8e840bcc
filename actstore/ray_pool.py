"""Run shards on a pool of Ray actors: one per GPU (or N CPU actors), elastic and idempotent.

Each actor loads the model once and takes shards from the driver's queue (`shard_pool`). When
an actor dies (process killed, node lost), its in-flight shards are queued again and a
replacement starts; a shard that keeps killing workers fails the run after `max_retries`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from actstore.shard_pool import IN_FLIGHT_PER_WORKER, ShardPool, WorkerDiedError, worker_args
from actstore.store import ActivationStore
from actstore.worker import ShardWorker
from actstore.writer import this_process

if TYPE_CHECKING:
    from actstore.generate import GenerateConfig
    from actstore.ray_cluster import WorkerPlan

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

    if not shards:
        return
    args = worker_args(cfg, job_id, plan)
    actor_cls = ray.remote(ShardWorker).options(
        num_gpus=1 if args["device"] == "cuda" else 0, num_cpus=plan.cpus,
        max_concurrency=IN_FLIGHT_PER_WORKER, max_restarts=0, runtime_env=worker_runtime_env())

    def start() -> Any:
        return actor_cls.remote(store.url, driver=this_process(), **args)

    RayPool(store, start, min(plan.workers, len(shards)), cfg.max_retries).run(
        shards, progress=cfg.progress, desc=f"generate {store.key}")


class RayPool(ShardPool):
    """Shards on Ray actors; a dead actor is replaced and its shards queued again."""

    def __init__(self, store: ActivationStore, start: Any, n_workers: int,
                 max_retries: int) -> None:
        self.start = start
        super().__init__(store, n_workers, max_retries)

    def _start(self) -> Any:
        return self.start()

    def _submit(self, worker: Any, shard: int) -> Any:
        return worker.process.remote(shard)

    def _wait(self, handles: list[Any], timeout: float) -> list[Any]:
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return list(ready)

    def _result(self, handle: Any) -> int:
        import ray

        try:
            return int(ray.get(handle))
        except ray.exceptions.RayActorError as e:
            raise WorkerDiedError(str(e)) from e
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, BaseException):
                raise e.cause from e  # the worker's own error, judged by the loop
            raise

    def shutdown(self) -> None:
        import ray

        for actor in self.workers.values():
            ray.kill(actor)
