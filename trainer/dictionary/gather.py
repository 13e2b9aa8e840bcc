"""A sliced dictionary gathered into an ordinary one (for the final files and the SAELens
export, which are identical in layout to an unsliced run's)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.dictionary.dictionaries import SparseDictionary

#: The dimension along which each sliced tensor is split; the others are replicated.
SHARDED_DIM = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "log_threshold": 0,
               "tokens_since_fired": 0}


def gathered(member: SparseDictionary) -> SparseDictionary | None:
    """On tp rank 0 of each dp row: the whole dictionary, on the CPU; None on the other
    ranks. An unsliced member is returned as it is (every rank)."""
    mesh = getattr(member, "mesh", None)
    if mesh is None or mesh.tp == 1:
        return member
    local = {k: v.detach().cpu() for k, v in member.state_dict().items()}
    dst = mesh.dp_rank * mesh.tp  # the global rank of tp rank 0 in this dp row
    parts: list[dict[str, torch.Tensor]] | None = [{}] * mesh.tp if mesh.tp_rank == 0 else None
    dist.gather_object(local, parts, dst=dst, group=mesh.tp_group)
    if parts is None:
        return None
    state = {k: torch.cat([p[k] for p in parts], SHARDED_DIM[k]) if k in SHARDED_DIM else v
             for k, v in local.items()}
    whole = SparseDictionary(member.cfg, torch.Generator().manual_seed(0), member.kernel)
    whole.to(state["W_dec"].dtype).load_state_dict(state)
    return whole
