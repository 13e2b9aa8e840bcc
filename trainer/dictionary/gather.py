"""A sliced dictionary gathered into an ordinary one (for the final files and the SAELens
export, which are identical in layout to an unsliced run's)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.dictionary.dictionaries import SparseDictionary
from trainer.dictionary.slices import build

#: The dimension along which each sliced tensor is split; the others are replicated. A CLT's
#: per-layer tensors (`W_encs.3`) split as the SAE's of the same name do.
SHARDED_DIM = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "log_threshold": 0,
               "tokens_since_fired": 0, "W_encs": 1, "W_decs": 0, "b_encs": 0,
               "log_thresholds": 0}


def sharded_dim(key: str) -> int | None:
    """The latent dimension of the state-dict entry `key`, None when it is replicated."""
    return SHARDED_DIM.get(key.split(".", maxsplit=1)[0])


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
    state = {k: v if (dim := sharded_dim(k)) is None else torch.cat([p[k] for p in parts], dim)
             for k, v in local.items()}
    whole = build(member.cfg, torch.Generator().manual_seed(0), member.kernel)
    whole.to(state["b_dec"].dtype).load_state_dict(state)
    return whole
