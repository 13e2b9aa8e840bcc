"""What every executor is: a lifecycle in the shape of Ray Data's `Datasink`.

    start()  → WorkerPlan     reach where the workers run (a Ray cluster is joined or started
                              here, before the store's lock is taken), plan them
    run(store, shards, job)   commit every shard given (`pool.ShardPool`'s loop)
    finish()                  always, after run: stop what start() started

`local.LocalExecutor` runs one `ShardWorker` in this process; `ray_pool.RayExecutor` runs one
per GPU (or several CPU workers) as Ray actors. `choose.choose_executor` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from actstore.generate.config import GenerateConfig, device_and_dtype
from actstore.store.activation_store import ActivationStore

#: Shards each worker holds at once: one computes while the other compresses and uploads.
IN_FLIGHT_PER_WORKER = 2


class WorkerPlan(NamedTuple):
    """How many workers run where, decided from the flags and the cluster's resources."""

    device: str
    """cuda (one GPU each) or cpu."""
    workers: int
    """Ray actors started."""
    cpus: float
    """CPUs each reserves in Ray."""
    threads: int
    """Torch threads each runs (CPU workers: their CPUs, so workers x threads = the cores)."""
    cluster_cpus: float
    """CPUs the cluster has."""
    executor: str = "ray"
    """ray, or local (one worker in this process)."""
    why: str = ""
    """What decided the executor, for the first line of output."""

    def describe(self) -> str:
        where = ("in this process, no Ray" if self.executor == "local"
                 else f"Ray has {self.cluster_cpus:g} CPUs")
        if self.device == "cuda":
            return f"{self.workers} GPU worker{'s' * (self.workers > 1)} ({where}; {self.why})"
        return (f"{self.workers} CPU worker{'s' * (self.workers > 1)} x {self.threads} torch "
                f"thread{'s' * (self.threads > 1)} ({where}; {self.why})")


class Executor(ABC):
    """Runs a generation job's shards; `start`, then `run`, then `finish` (always)."""

    name: str
    """local or ray."""

    def __init__(self, cfg: GenerateConfig, why: str) -> None:
        self.cfg, self.why = cfg, why
        self._plan: WorkerPlan | None = None

    @property
    def plan(self) -> WorkerPlan:
        """The workers it runs (known once started)."""
        if self._plan is None:
            raise RuntimeError(f"the {self.name} executor has not been started")
        return self._plan

    @abstractmethod
    def start(self) -> WorkerPlan:
        """Reach where the workers run and plan them; fails (in one line) before any lock."""

    @abstractmethod
    def run(self, store: ActivationStore, shards: list[int], job_id: str) -> None:
        """Commit every shard in `shards`; returns when all are committed or raises."""

    def finish(self) -> None:  # noqa: B027 -- most executors start nothing to stop
        """Stop whatever `start` started (nothing, by default)."""


def worker_args(cfg: GenerateConfig, job_id: str, plan: WorkerPlan) -> dict[str, Any]:
    """`ShardWorker`'s keyword arguments for this job, wherever it runs."""
    device, dtype = device_and_dtype(cfg)
    return {"model": cfg.model, "revision": cfg.revision, "model_dtype": dtype,
            "device": device, "batch_size": cfg.batch_size, "job_id": job_id,
            "storage_options": cfg.storage_options, "threads": plan.threads}
