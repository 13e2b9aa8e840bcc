"""The 2-D layout of ranks for latent sharding: dp × tp.

    rank = dp_rank · tp + tp_rank           (torch's DeviceMesh order: a tp group is tp
                                             consecutive ranks, e.g. the GPUs of one node)

The tp ranks of one dp row read the same batches and hold disjoint, contiguous slices of every
dictionary's latents; the dp ranks of one tp column hold the same slice and average its
gradients. tp = 1 is plain data parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.distributed.device_mesh import init_device_mesh

from trainer.parallel.distributed import World


@dataclass(frozen=True)
class Mesh:
    """This rank's place in the dp × tp layout."""

    dp: int
    """Data-parallel replicas (world size / tp)."""
    tp: int
    """Ranks a dictionary's latents are split over."""
    dp_rank: int
    """Which replica (which batches) this rank serves."""
    tp_rank: int
    """Which slice of the latents this rank holds."""
    dp_group: Any = None
    """Process group of the ranks holding this slice (None: the whole world, when tp = 1)."""
    tp_group: Any = None
    """Process group of the ranks sharing this batch (None when tp = 1)."""
    device_mesh: Any = None
    """The torch DeviceMesh ("dp", "tp") the groups come from (None when tp = 1); sharded
    checkpoints place their DTensors on it."""

    def latent_slice(self, latents: int) -> tuple[int, int]:
        """[start, stop) of the latents this rank holds: contiguous slices of ceil(latents /
        tp), the last one shorter (torch.chunk's split, which DTensor's Shard placement and so
        the sharded checkpoints use)."""
        size = -(-latents // self.tp)
        start = min(self.tp_rank * size, latents)
        return start, min(start + size, latents)


def data_parallel(ranks: int, tp: int) -> int:
    """dp for `ranks` ranks split into tp groups; refuses a tp that does not divide them."""
    if tp < 1 or ranks % tp:
        raise ValueError(f"--tp {tp} must divide the number of ranks ({ranks})")
    return ranks // tp


def make_mesh(world: World, tp: int) -> Mesh:
    """The dp × tp mesh over the running process group (`tp` must divide the world size)."""
    dp = data_parallel(world.size, tp)
    if tp == 1:
        return Mesh(dp=dp, tp=1, dp_rank=world.rank, tp_rank=0)
    mesh = init_device_mesh(world.device.type, (dp, tp), mesh_dim_names=("dp", "tp"))
    return Mesh(dp=dp, tp=tp, dp_rank=mesh.get_local_rank("dp"),
                tp_rank=mesh.get_local_rank("tp"), dp_group=mesh.get_group("dp"),
                tp_group=mesh.get_group("tp"), device_mesh=mesh)
