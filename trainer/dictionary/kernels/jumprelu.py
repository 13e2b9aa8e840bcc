"""JumpReLU's autograd functions: the straight-through estimators of Rajamanoharan et al.
(2024) for the threshold, which the step function itself has no gradient for."""

from __future__ import annotations

from typing import Any

import torch


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """x * H(x - t); d/dt by the straight-through estimator of Rajamanoharan et al. (2024)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: torch.Tensor, bw: float) -> torch.Tensor:
        ctx.save_for_backward(x, t)
        ctx.bw = bw
        return x * (x > t).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, t = ctx.saved_tensors
        gx = g * (x > t).to(g.dtype)
        gt = (g * -(t / ctx.bw) * _rectangle((x - t) / ctx.bw)).sum(0)
        return gx, gt, None


class _Step(torch.autograd.Function):
    """H(x - t); no gradient to x, straight-through gradient to t."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: torch.Tensor, bw: float) -> torch.Tensor:
        ctx.save_for_backward(x, t)
        ctx.bw = bw
        return (x > t).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, t = ctx.saved_tensors
        gt = (g * -(1.0 / ctx.bw) * _rectangle((x - t) / ctx.bw)).sum(0)
        return torch.zeros_like(x), gt, None


def jump_relu(x: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    out: torch.Tensor = _JumpReLU.apply(x, threshold, bandwidth)  # type: ignore[no-untyped-call]
    return out


def step(x: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    out: torch.Tensor = _Step.apply(x, threshold, bandwidth)  # type: ignore[no-untyped-call]
    return out
