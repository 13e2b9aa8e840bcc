"""Run shards on a pool of Ray actors: one per GPU (or N CPU actors), elastic and idempotent.

Each actor loads the model once and takes shards from the driver's queue (`pool.ShardPool`).
When an actor dies (process killed, node lost), its in-flight shards are queued again and a
replacement starts if the cluster (its live nodes' resources, as Ray counts them) has room for
one; a shard that keeps killing workers fails the run after `max_retries`.
"""

from __future__ import annotations

from typing import Any

from actstore.generate.config import GenerateConfig
from actstore.generate.executors.base import (
    IN_FLIGHT_PER_WORKER,
    Executor,
    WorkerPlan,
    worker_args,
)
from actstore.generate.executors.head_watch import HeadWatch
from actstore.generate.executors.pool import ShardPool, WorkerDiedError
from actstore.generate.executors.ray_cluster import connect, worker_runtime_env
from actstore.generate.executors.reaper import Reaper
from actstore.generate.worker import ShardWorker
from actstore.store.activation_store import ActivationStore
from actstore.store.lock import this_process


class RayExecutor(Executor):
    """Ray actors: one per GPU, or CPU workers x threads = the cores Ray has. `start` joins
    the cluster (or starts a local Ray, which a `Reaper` then ties to this process, so that
    it dies with it even when this process is killed outright); `finish` shuts down what was
    started here."""

    name = "ray"

    def __init__(self, cfg: GenerateConfig, why: str) -> None:
        super().__init__(cfg, why)
        self._started_here = False
        self._reaper: Reaper | None = None
        self._watch: HeadWatch | None = None

    def start(self) -> WorkerPlan:
        import ray

        cluster = connect(self.cfg)
        self._watch = HeadWatch(ray.get_runtime_context().gcs_address)
        self._started_here = cluster.started_here
        self._reaper = Reaper() if cluster.started_here else None
        self._plan = cluster.plan._replace(why=self.why)
        return self._plan

    def run(self, store: ActivationStore, shards: list[int], job_id: str) -> None:
        import ray

        if not shards:
            return
        plan = self.plan
        args = worker_args(self.cfg, job_id, plan)
        actor_cls = ray.remote(ShardWorker).options(
            num_gpus=1 if args["device"] == "cuda" else 0, num_cpus=plan.cpus,
            max_concurrency=IN_FLIGHT_PER_WORKER, max_restarts=0,
            runtime_env=worker_runtime_env())

        def start() -> Any:
            return actor_cls.remote(store.url, driver=this_process(), **args)

        need = ("GPU", 1.0) if args["device"] == "cuda" else ("CPU", plan.cpus)
        RayPool(store, start, min(plan.workers, len(shards)), self.cfg.max_retries,
                need=need, start_s=self.cfg.worker_start_s).run(
            shards, progress=self.cfg.progress, desc=f"generate {store.key}")

    def finish(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None


class RayPool(ShardPool):
    """Shards on Ray actors; a dead actor is replaced and its shards queued again."""

    def __init__(self, store: ActivationStore, start: Any, n_workers: int,
                 max_retries: int, *, need: tuple[str, float] = ("CPU", 1.0),
                 start_s: float = 900.0) -> None:
        self.start, self.need = start, need
        super().__init__(store, n_workers, max_retries, start_s)

    def _start(self) -> Any:
        return self.start()

    def _ready(self, worker: Any) -> Any:
        return worker.ready.remote()

    def _room(self) -> tuple[int | None, str]:
        import ray

        kind, amount = self.need  # the live nodes' totals: a lost node's are gone from them
        have = float(ray.cluster_resources().get(kind, 0.0))  # type: ignore[no-untyped-call]
        return int(have // amount), f"the cluster has {have:g} {kind}, a worker needs {amount:g}"

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

    def _stop(self, worker: Any) -> None:
        import ray

        ray.kill(worker)

    def shutdown(self) -> None:
        import ray

        for actor in self.workers.values():
            ray.kill(actor)
