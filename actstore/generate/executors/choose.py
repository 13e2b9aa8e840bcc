"""Which executor a generation job runs on, decided before the store's lock is taken.

A job given a cluster (`--address`, `RAY_ADDRESS`, a Ray already initialised in this process),
explicit `--workers`/`--cpus-per-worker`, or a machine with several GPUs runs on Ray workers,
one per GPU. Any other job runs one worker in this process (`--executor auto`): on one GPU Ray
adds only its fixed cost (start, actor processes importing torch and loading the model again,
shut down), and on CPU one process using every core outran one 1-thread Ray worker per core at
every size measured (benchmarks/README.md, section `generate_throughput.py`).
"""

from __future__ import annotations

import sys

import torch

from actstore.generate.config import GenerateConfig, device_and_dtype
from actstore.generate.executors.base import Executor
from actstore.generate.executors.local import LocalExecutor
from actstore.generate.executors.ray_cluster import ray_address
from actstore.generate.executors.ray_pool import RayExecutor


def choose_executor(cfg: GenerateConfig) -> Executor:
    """The executor this job runs on (see the module docstring), not yet started; its `why`
    is said on the job's first line of output."""
    if cfg.executor != "auto":
        why = f"--executor {cfg.executor}"
        return (LocalExecutor if cfg.executor == "local" else RayExecutor)(cfg, why)
    address, source = ray_address(cfg)
    ray_mod = sys.modules.get("ray")  # imported only if someone already uses it
    if address:
        return RayExecutor(cfg, f"cluster from {source}")
    if ray_mod is not None and ray_mod.is_initialized():
        return RayExecutor(cfg, "Ray already initialised in this process")
    if cfg.workers or cfg.cpus_per_worker:
        return RayExecutor(cfg, "--workers/--cpus-per-worker given")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_and_dtype(cfg)[0] == "cuda" and gpus > 1:
        return RayExecutor(cfg, f"{gpus} GPUs: one Ray worker each")
    why = "one local device; --executor ray for Ray workers"
    return LocalExecutor(cfg, why)
