"""Reaching Ray for a generation job: an unreachable address fails in one line within seconds
(ray.init alone retries for minutes), a cluster without the CPUs or GPUs the workers need is
refused, and on CPU the default plan uses every core Ray has (workers x threads)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, NamedTuple

from actstore.generate.config import GenerateConfig, device_and_dtype
from actstore.generate.executors.base import WorkerPlan
from actstore.store.errors import StoreError

#: Environment a worker needs that a remote cluster does not have: credentials, endpoints,
#: offline switches.
FORWARDED_ENV = ("AWS_", "GOOGLE_", "HF_", "TRANSFORMERS_", "FSSPEC_")


def worker_runtime_env() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    return {"env_vars": env}


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


def plan_workers(cfg: GenerateConfig, cpus: float, gpus: float) -> WorkerPlan:
    """GPU: one worker per GPU. CPU: workers x threads = the cores Ray has, by default
    `DEFAULT_CPU_THREADS` threads per worker (the CPU layouts measured: benchmarks/README.md,
    section `generate_throughput.py`)."""
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
