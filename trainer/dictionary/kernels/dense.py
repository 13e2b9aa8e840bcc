"""The dense step's codes: top-k of each row or of the batch over a (batch, latents) tensor of
pre-activations, with per-latent firing counts taken from the selections (O(B·k), no pass over
(B, n), no host sync)."""

from __future__ import annotations

import math

import torch


def selection_counts(indices: torch.Tensor, active: torch.Tensor, n: int) -> torch.Tensor:
    """Per latent, how many of the selections were active: O(B·k), not a pass over (B, n),
    and no host sync (a scatter-add, where bincount would size its output on the host)."""
    out = torch.zeros(n, dtype=torch.long, device=indices.device)
    return out.scatter_add_(0, indices.flatten(), active.flatten().long())


def smallest_positive(values: torch.Tensor) -> torch.Tensor:
    """The smallest positive value, +inf when there is none (no host sync)."""
    inf = values.new_full((1,), math.inf)
    return torch.cat([values.masked_fill(values <= 0, math.inf), inf]).min()


def topk_codes(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes keeping each row's k largest pre-activations (ReLU'd), and per-latent counts."""
    top = torch.topk(pre, k, dim=-1)
    values = torch.relu(top.values)
    z = torch.zeros_like(pre).scatter_(-1, top.indices, values)
    return z, selection_counts(top.indices, values > 0, pre.shape[-1])


def batch_topk_codes(pre: torch.Tensor, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes keeping the batch's k_total largest (ReLU'd) pre-activations, and counts."""
    flat = torch.relu(pre).flatten()
    top = torch.topk(flat, min(k_total, flat.numel()))
    z = torch.zeros_like(flat).scatter_(0, top.indices, top.values).view_as(pre)
    return z, selection_counts(top.indices % pre.shape[-1], top.values > 0, pre.shape[-1])
