"""The process group, whoever started it: torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the
environment), Ray Train (the group already exists) or nobody (one plain process).

NCCL on GPUs, gloo on CPU. With one process nothing is initialised, so a single-rank run is
exactly a plain run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from actstore.model.device import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place in the data-parallel group."""

    rank: int
    """Global rank."""
    size: int
    """Number of ranks."""
    device: torch.device
    """Where this rank trains."""
    owns_group: bool
    """True when we initialised the process group (and so tear it down)."""

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def wants_cuda(device: str) -> bool:
    """Whether `--device` (auto, cpu, cuda) means a GPU on this machine."""
    return resolve_device(device) == "cuda"


def setup(device: str = "auto", timeout_s: float = 600) -> World:
    """Join (or start) the process group and pick this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = wants_cuda(device)
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is visible")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), dev, owns_group=False)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(0, 1, dev, owns_group=False)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), dev, owns_group=True)


def teardown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(t: torch.Tensor, op: str = "sum", group: Any = None) -> torch.Tensor:
    """In place over all ranks, or over `group`'s (a no-op without a process group or when the
    group is one rank); returns `t`."""
    if world_size() > 1 and (group is None or dist.get_world_size(group) > 1):
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                               "min": dist.ReduceOp.MIN}[op], group=group)
    return t


def group_size(group: Any = None) -> int:
    """Ranks in `group` (the whole world when None; 1 without a process group)."""
    return world_size() if group is None or world_size() == 1 else dist.get_world_size(group)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sums of every rank's `values`, added in rank order (the same on every
    rank)."""
    parts = gather_objects([float(v) for v in values])
    return [sum(column) for column in zip(*parts, strict=True)]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (an error raised on rank 0 reaches all ranks this way)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
