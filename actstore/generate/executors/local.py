"""One `ShardWorker` in this process: what a job on one device runs by default (Ray would add
only its fixed cost there: benchmarks/README.md, section `generate_throughput.py`)."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import torch

from actstore.generate.config import device_and_dtype
from actstore.generate.executors.base import (
    IN_FLIGHT_PER_WORKER,
    Executor,
    WorkerPlan,
    worker_args,
)
from actstore.generate.executors.pool import ShardPool
from actstore.generate.worker import ShardWorker
from actstore.store.activation_store import ActivationStore


def local_cores() -> int:
    """The cores this process may run on (what a local Ray would count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LocalExecutor(Executor):
    """One worker in this process using every core (or --cpus-per-worker threads); no Ray."""

    name = "local"

    def start(self) -> WorkerPlan:
        device, _ = device_and_dtype(self.cfg)
        cores = local_cores()
        cpw = self.cfg.cpus_per_worker
        threads = max(1, int(cpw)) if cpw else cores
        self._plan = WorkerPlan(device, 1, float(threads), threads, float(cores), "local",
                                self.why)
        return self._plan

    def run(self, store: ActivationStore, shards: list[int], job_id: str) -> None:
        if not shards:
            return
        args = worker_args(self.cfg, job_id, self.plan)
        threads = torch.get_num_threads()
        try:
            LocalPool(store, lambda: ShardWorker(store.url, **args), self.cfg.max_retries).run(
                shards, progress=self.cfg.progress, desc=f"generate {store.key}")
        finally:
            torch.set_num_threads(threads)  # the worker set this process's


class LocalPool(ShardPool):
    """One `ShardWorker` in this process, two threads feeding it: the model runs under the
    worker's lock while the previous shard compresses and uploads. No Ray, no child process:
    what a local job on one device needs."""

    def __init__(self, store: ActivationStore, make_worker: Any, max_retries: int) -> None:
        self.make_worker = make_worker
        self.threads = ThreadPoolExecutor(IN_FLIGHT_PER_WORKER, thread_name_prefix="actstore")
        super().__init__(store, 1, max_retries)

    def _start(self) -> ShardWorker:
        return self.make_worker()  # type: ignore[no-any-return]

    def _submit(self, worker: Any, shard: int) -> Future[int]:
        return self.threads.submit(worker.process, shard)

    def _wait(self, handles: list[Any], timeout: float) -> list[Any]:
        done, _ = wait_futures(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def _result(self, handle: Any) -> int:
        return int(handle.result())

    def _stop(self, worker: Any) -> None:
        worker.cancel()  # never called: a worker here is ready once made

    def shutdown(self) -> None:
        # A shard being computed stops at its next batch; one being written finishes (or
        # fails) on its own, its lease keeping anyone else off it meanwhile.
        for worker in self.workers.values():
            worker.cancel()
        self.threads.shutdown(wait=True, cancel_futures=True)
