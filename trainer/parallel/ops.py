"""Collectives of the latent-sliced step, as autograd functions where gradients cross them
(Megatron's pair): the input enters every slice (`copy_to_slices`: identity forward, sum of
the slices' gradients backward) and the slices' partial reconstructions are summed
(`sum_over_slices`: all-reduce forward, identity backward: every tp rank computes the same
loss from the same sum, so each slice's share of the gradient is the gradient itself).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _CopyToSlices(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        g = grads[0].contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _SumOverSlices(torch.autograd.Function):
    @staticmethod
    def forward(_ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(_ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grads[0], None


def copy_to_slices(x: torch.Tensor, group: Any) -> torch.Tensor:
    """x on every slice; its gradient is the sum of the slices' gradients."""
    out: torch.Tensor = _CopyToSlices.apply(x, group)  # type: ignore[no-untyped-call]
    return out


def sum_over_slices(x: torch.Tensor, group: Any) -> torch.Tensor:
    """The sum of every slice's x; each slice's gradient is the sum's gradient."""
    out: torch.Tensor = _SumOverSlices.apply(x, group)  # type: ignore[no-untyped-call]
    return out


@torch.no_grad()
def gather(t: torch.Tensor, group: Any) -> torch.Tensor:
    """(tp, *t.shape): every slice's t, in tp-rank order (no gradient)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.stack(parts)


@torch.no_grad()
def gather_uneven(t: torch.Tensor, group: Any) -> list[torch.Tensor]:
    """Every slice's t, of possibly different lengths along dim 0, in tp-rank order."""
    size = torch.tensor([len(t)], device=t.device)
    sizes = gather(size, group).flatten().tolist()
    padded = torch.cat([t, t.new_zeros(max(sizes) - len(t), *t.shape[1:])])
    return [part[:n] for part, n in zip(gather(padded, group), sizes, strict=True)]
