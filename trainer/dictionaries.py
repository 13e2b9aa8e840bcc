"""Sparse dictionaries: the seed paper's ReLU + L1 sparse coding, TopK (with AuxK), BatchTopK and
JumpReLU, on one parameterisation (SAELens' names, so export is a rename):

    pre   = (x - b_dec) @ W_enc + b_enc         the pre-encoder bias b_dec is tied to the decoder's
    z     = activation(pre)                     relu | top-k | batch top-k | jump relu
    x_hat = z @ W_dec + b_dec                   rows of W_dec (one per latent) have unit norm

Losses are per token: squared error summed over d_model, averaged over the batch, plus the
architecture's sparsity term. Decoder rows are kept at unit norm: `remove_parallel_grad()`
before the optimiser step, `normalize_decoder()` after it (the seed paper's constraint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from trainer import distributed

Arch = Literal["relu", "topk", "batchtopk", "jumprelu"]


@dataclass(frozen=True)
class DictionaryConfig:
    """One dictionary's shape and sparsity settings."""

    arch: Arch
    """relu (L1 penalty), topk, batchtopk or jumprelu (L0 penalty)."""
    d_model: int
    """Width of the activations."""
    latents: int
    """Number of dictionary features."""
    k: int | None = None
    """Active latents per token (topk; batchtopk: on average)."""
    l1: float = 0.0
    """L1 coefficient on the codes (relu)."""
    l0: float = 0.0
    """L0 coefficient (jumprelu)."""
    aux_k: int | None = None
    """Dead latents used by AuxK (topk, batchtopk); default 2 * k, capped at the dead count."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_after_tokens: int = 10_000_000
    """A latent silent for this many tokens is dead (AuxK, and the dead-latent metric)."""
    jump_bandwidth: float = 1e-3
    """Width of the straight-through estimator's kernel (jumprelu)."""
    jump_init_threshold: float = 1e-3
    """Initial threshold of every latent (jumprelu)."""
    threshold_momentum: float = 0.01
    """Update rate of batchtopk's inference threshold."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.latents < 1:
            raise ValueError("d_model and latents must be >= 1")
        if self.arch in ("topk", "batchtopk") and (self.k is None
                                                   or not 1 <= self.k <= self.latents):
            raise ValueError(f"--k must be in [1, latents={self.latents}] for {self.arch}, "
                                 f"got {self.k}")
        if self.arch == "relu" and self.l1 < 0:
            raise ValueError("l1 must be >= 0")
        if self.arch == "jumprelu" and (self.l0 < 0 or self.jump_bandwidth <= 0):
            raise ValueError("l0 must be >= 0 and jump_bandwidth > 0")


class Output(NamedTuple):
    """A training forward pass."""

    x_hat: torch.Tensor
    """Reconstruction, like x."""
    z: torch.Tensor
    """Codes, (batch, latents)."""
    loss: torch.Tensor
    """Total loss (scalar)."""
    terms: dict[str, torch.Tensor]
    """Its parts: mse, and l1_loss / l0_loss / aux_loss as the architecture has them
    (detached; coefficient included). Names end in `_loss` so they never collide with the
    metrics of the same quantity (`l0` is the mean number of active latents)."""
    fired: torch.Tensor
    """Per latent, the tokens of this batch on which it was active, (latents,) int64."""


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


class SparseDictionary(nn.Module):
    """A dictionary of `latents` unit-norm directions in a `d_model` space."""

    threshold: torch.Tensor
    """batchtopk's inference threshold (a running estimate of the smallest kept activation)."""
    tokens_since_fired: torch.Tensor
    """Per latent, tokens since it last fired (dead latents, AuxK)."""

    def __init__(self, cfg: DictionaryConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_model, cfg.latents
        w = torch.empty(n, d)
        bound = 1 / math.sqrt(d)
        w.uniform_(-bound, bound, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.T.clone())  # encoder = decoder transpose at init
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if cfg.arch == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((n,), math.log(cfg.jump_init_threshold)))
        self.register_buffer("threshold", torch.zeros(()))  # batchtopk at inference
        self.register_buffer("tokens_since_fired", torch.zeros(n, dtype=torch.long))

    # --- the maps ---------------------------------------------------------------------------

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes at inference (batchtopk uses its learned threshold, not the batch)."""
        pre = self.pre_acts(x)
        arch = self.cfg.arch
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk":
            return _topk(pre, self.cfg.k or 1)[0]
        if arch == "batchtopk":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        return jump_relu(pre, self.log_threshold.exp(), self.cfg.jump_bandwidth)

    def forward(self, x: torch.Tensor) -> Output:
        """Training pass: codes, reconstruction, losses; tracks which latents fire."""
        pre = self.pre_acts(x)
        arch = self.cfg.arch
        fired = None  # per-latent counts: from the B·k selections when there are some
        if arch == "batchtopk":
            z, fired = _batch_topk(pre, (self.cfg.k or 1) * x.shape[0])
            self._update_threshold(z)
        elif arch == "jumprelu":
            z = jump_relu(pre, self.log_threshold.exp(), self.cfg.jump_bandwidth)
        elif arch == "topk":
            z, fired = _topk(pre, self.cfg.k or 1)
        else:
            z = torch.relu(pre)
        if fired is None:
            fired = (z > 0).sum(0)
        x_hat = self.decode(z)
        mse = ((x_hat - x) ** 2).sum(-1).mean()
        terms = {"mse": mse}
        if arch == "relu":
            terms["l1_loss"] = self.cfg.l1 * z.abs().sum(-1).mean()
        elif arch == "jumprelu":
            l0 = step(pre, self.log_threshold.exp(), self.cfg.jump_bandwidth)
            terms["l0_loss"] = self.cfg.l0 * l0.sum(-1).mean()
        else:
            terms["aux_loss"] = self.cfg.aux_coef * self._aux_loss(x, x_hat, pre)
        self._track(fired, x.shape[0])
        loss = torch.stack(list(terms.values())).sum()
        return Output(x_hat, z, loss, {k: v.detach() for k, v in terms.items()}, fired)

    # --- AuxK, batchtopk threshold, activity --------------------------------------------------

    def dead_mask(self) -> torch.Tensor:
        dead: torch.Tensor = self.tokens_since_fired >= self.cfg.dead_after_tokens
        return dead

    def _aux_loss(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """AuxK (Gao et al. 2024): the dead latents' top-k_aux reconstruct the residual."""
        dead = self.dead_mask()
        if not bool(dead.any()):
            return x.new_zeros(())
        k_aux = min(self.cfg.aux_k or 2 * (self.cfg.k or 1), int(dead.sum()))
        z_aux = _topk(pre.masked_fill(~dead, float("-inf")), k_aux)[0]
        residual = (x - x_hat).detach()
        return ((z_aux @ self.W_dec - residual) ** 2).sum(-1).mean()

    @torch.no_grad()
    def _update_threshold(self, z: torch.Tensor) -> None:
        """Running estimate of the smallest kept activation, over the batches of all ranks
        (so every rank keeps the same threshold)."""
        # float32 even under autocast; +inf when nothing fired (then the threshold stays)
        current = z.masked_fill(z <= 0, math.inf).min().to(self.threshold.dtype)
        current = distributed.all_reduce(current, "min")
        m = self.cfg.threshold_momentum  # torch.where, not `if`: no host sync per step
        updated = torch.where(self.threshold == 0, current,
                              (1 - m) * self.threshold + m * current)
        self.threshold.copy_(torch.where(torch.isfinite(current), updated, self.threshold))

    @torch.no_grad()
    def _track(self, counts: torch.Tensor, tokens: int) -> None:
        """Tokens since each latent fired, over all ranks' batches (the same on every rank;
        DDP's buffer broadcast is off because it would overwrite this with rank 0's view)."""
        fired = distributed.all_reduce((counts > 0).to(torch.int32), "max").bool()
        self.tokens_since_fired.add_(tokens * distributed.world_size())
        self.tokens_since_fired.masked_fill_(fired, 0)

    # --- the decoder constraint ---------------------------------------------------------------

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of each decoder row's gradient along the row (before the step)."""
        if self.W_dec.grad is not None:
            w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
            grad = self.W_dec.grad
            grad.sub_((grad * w).sum(1, keepdim=True) * w)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (after the step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def init_bias(self, sample: torch.Tensor,
                  method: Literal["mean", "geometric_median"] = "geometric_median") -> None:
        """Set b_dec to a centre of the data, so the codes start on centred activations."""
        self.b_dec.copy_(sample.float().mean(0) if method == "mean"
                         else geometric_median(sample.float()))


def _counts(indices: torch.Tensor, active: torch.Tensor, n: int) -> torch.Tensor:
    """Per latent, how many of the selections were active: O(B·k), not a pass over (B, n),
    and no host sync (a scatter-add, where bincount would size its output on the host)."""
    out = torch.zeros(n, dtype=torch.long, device=indices.device)
    return out.scatter_add_(0, indices.flatten(), active.flatten().long())


def _topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes keeping each row's k largest pre-activations (ReLU'd), and per-latent counts."""
    top = torch.topk(pre, k, dim=-1)
    values = torch.relu(top.values)
    z = torch.zeros_like(pre).scatter_(-1, top.indices, values)
    return z, _counts(top.indices, values > 0, pre.shape[-1])


def _batch_topk(pre: torch.Tensor, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes keeping the batch's k_total largest (ReLU'd) pre-activations, and counts."""
    flat = torch.relu(pre).flatten()
    top = torch.topk(flat, min(k_total, flat.numel()))
    z = torch.zeros_like(flat).scatter_(0, top.indices, top.values).view_as(pre)
    return z, _counts(top.indices % pre.shape[-1], top.values > 0, pre.shape[-1])


def geometric_median(points: torch.Tensor, iters: int = 100, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to `points`."""
    y: torch.Tensor = points.mean(0)
    for _ in range(iters):
        w = 1 / (points - y).norm(dim=1).clamp_min(eps)
        new: torch.Tensor = (w[:, None] * points).sum(0) / w.sum()
        if (new - y).norm() < eps * (1 + y.norm()):
            return new
        y = new
    return y
