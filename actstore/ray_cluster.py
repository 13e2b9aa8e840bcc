"""Where a generation job runs, decided before the store's lock is taken.

A job given a cluster (`--address`, `RAY_ADDRESS`, a Ray already initialised in this process),
explicit `--workers`/`--cpus-per-worker`, or a machine with several GPUs runs on Ray workers, one
per GPU. Any other job runs one worker in this process (`--executor auto`): on one GPU Ray adds
only its fixed cost (start, actor processes importing torch and loading the model again, shut
down: ~9 s), and on CPU one process using every core outran one 1-thread Ray worker per core
at every size measured (2 cores, MiniLM: 10,737 vs 5,071 tokens/s end to end on 129k tokens,
benchmarks/generate_throughput.py).

Reaching Ray: an unreachable address fails in one line within seconds (ray.init alone retries
for minutes), a cluster without the CPUs or GPUs the workers need is refused, and on CPU the
default plan uses every core Ray has (workers x threads).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

from actstore.errors import StoreError
from actstore.ray_pool import worker_runtime_env

if TYPE_CHECKING:
    from actstore.generate import GenerateConfig

#: Torch threads per CPU worker by default (workers = cores // this).
DEFAULT_CPU_THREADS = 1


class RayUnavailableError(StoreError):
    """The Ray cluster cannot be reached, or lacks the resources the job asks for."""


def ray_address(cfg: GenerateConfig) -> tuple[str | None, str]:
    """The cluster address and where it came from (an empty RAY_ADDRESS means unset)."""
    if cfg.address:
        return cfg.address, "--address"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return (env, "RAY_ADDRESS") if env else (None, "a local Ray started here")


def _probe(address: str, source: str, timeout_s: float) -> None:
    """Fail fast, in one line, when nothing listens at a host:port address (ray.init would
    retry for minutes)."""
    target = address.split("://", 1)[-1]
    if target in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline:
                raise RayUnavailableError(
                    f"cannot reach the Ray cluster at {address} (from {source}) within "
                    f"{timeout_s:g}s: {e}. Start it (`ray start --head`), fix the address, or "
                    f"leave {source} unset to run on a local Ray") from None
            time.sleep(0.5)


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


def plan_workers(cfg: GenerateConfig, cpus: float, gpus: float) -> WorkerPlan:
    """GPU: one worker per GPU. CPU: workers x threads = the cores Ray has, by default
    `DEFAULT_CPU_THREADS` threads per worker (measured best on CPU, benchmarks/README.md)."""
    from actstore.generate import device_and_dtype

    device, _ = device_and_dtype(cfg)
    if device == "cuda":
        n = cfg.workers or max(1, int(gpus))
        each = cfg.cpus_per_worker or 1.0
        return WorkerPlan(device, n, each, max(1, int(each)), cpus)
    cores = max(1, int(cpus))
    if cfg.workers and cfg.cpus_per_worker:
        n, each = cfg.workers, cfg.cpus_per_worker
    elif cfg.workers:
        n, each = cfg.workers, float(max(1, cores // cfg.workers))
    else:
        each = cfg.cpus_per_worker or float(min(DEFAULT_CPU_THREADS, cores))
        n = max(1, int(cores // each))
    return WorkerPlan(device, n, each, max(1, int(each)), cpus)


def local_cores() -> int:
    """The cores this process may run on (what a local Ray would count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_executor(cfg: GenerateConfig) -> tuple[WorkerPlan | None, str]:
    """The in-process plan when the job should skip Ray (see the module docstring), else None
    (connect to Ray, which plans the workers); and why, for the first line of output."""
    import torch

    from actstore.generate import device_and_dtype

    if cfg.executor != "auto":
        why = f"--executor {cfg.executor}"
        return (_in_process(cfg, why) if cfg.executor == "local" else None), why
    address, source = ray_address(cfg)
    ray_mod = sys.modules.get("ray")  # imported only if someone already uses it
    if address:
        return None, f"cluster from {source}"
    if ray_mod is not None and ray_mod.is_initialized():
        return None, "Ray already initialised in this process"
    if cfg.workers or cfg.cpus_per_worker:
        return None, "--workers/--cpus-per-worker given"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_and_dtype(cfg)[0] == "cuda" and gpus > 1:
        return None, f"{gpus} GPUs: one Ray worker each"
    why = "one local device; --executor ray for Ray workers"
    return _in_process(cfg, why), why


def _in_process(cfg: GenerateConfig, why: str) -> WorkerPlan:
    from actstore.generate import device_and_dtype

    device, _ = device_and_dtype(cfg)
    cores = local_cores()
    threads = max(1, int(cfg.cpus_per_worker)) if cfg.cpus_per_worker else cores
    return WorkerPlan(device, 1, float(threads), threads, float(cores), "local", why)


class Cluster(NamedTuple):
    """The Ray cluster a job runs on."""

    started_here: bool
    """Ray was started by this process (shut it down after)."""
    plan: WorkerPlan
    """The workers it will run."""


def connect(cfg: GenerateConfig, timeout_s: float = 10.0) -> Cluster:
    """Join the cluster (or start a local Ray), plan the workers and check the cluster has
    what they need, before any lock is taken."""
    import ray

    started_here = not ray.is_initialized()
    address, source = ray_address(cfg)
    if started_here:
        if address:
            _probe(address, source, timeout_s)
        ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False,
                 runtime_env=worker_runtime_env())
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    plan = plan_workers(cfg, float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0)))
    need, amount = ("GPU", 1.0) if plan.device == "cuda" else ("CPU", plan.cpus)
    have = float(resources.get(need, 0.0))
    if have < amount:
        if started_here:
            ray.shutdown()
        raise RayUnavailableError(
            f"the Ray cluster ({address or 'local'}, from {source}) has {have:g} {need}, a "
            f"worker needs {amount:g}: add nodes, or lower --cpus-per-worker")
    return Cluster(started_here, plan)
