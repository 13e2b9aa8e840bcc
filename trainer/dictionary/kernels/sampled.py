"""The differentiable half of the sparse step: selected pre-activations and the decoder.

The gradient of the loss with respect to the pre-activations is non-zero only at the selected
entries S (m of them, m = batch·k for TopK), so the encoder's backward needs no (batch, latents)
tensor and 2·m·d multiply-adds per product instead of 2·batch·latents·d:

    values[i] = xc[r_i] · W_enc[:, c_i] + b_enc[c_i]        (computed by the selection pass)
    d xc[r]        = Σ_{i: r_i = r} g_i · W_enc[:, c_i]      embedding_bag over W_encᵀ, bags = rows
    d W_enc[:, c]  = Σ_{i: c_i = c} g_i · xc[r_i]            embedding_bag over xc, bags = latents
    d b_enc[c]     = Σ_{i: c_i = c} g_i                      index_add

and the decoder `x_hat[r] = Σ_{i: r_i = r} z_i · W_dec[c_i]` is `embedding_bag` itself, whose
own backward gives d W_dec (row-wise index adds) and d z (one dot product per entry).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

from trainer.dictionary.kernels.selection import Selection


class _Sampled(torch.autograd.Function):
    """Selected pre-activations as a function of (xc, W_enc, b_enc), for one or several
    selections of the same rows (the codes, AuxK's); the forward values come from the selection
    pass (they are exact products), the backward touches only the selected entries and makes
    one (latents, d) gradient for all selections together."""

    @staticmethod
    def forward(ctx: Any, xc: torch.Tensor, w_enc: torch.Tensor,
                _b_enc: torch.Tensor,  # an input only so that its gradient is returned
                sels: tuple[Selection, ...]) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(xc, w_enc, *[t for s in sels for t in (s.rows, s.cols, s.offsets)])
        return tuple(s.values.clone() for s in sels)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        xc, w_enc, *saved = ctx.saved_tensors
        rows, cols, offsets = saved[0::3], saved[1::3], saved[2::3]
        gs = [g.to(xc.dtype) for g in grads]
        latents = w_enc.shape[1]
        d_xc = d_w = d_b = None
        if ctx.needs_input_grad[0]:
            parts = [F.embedding_bag(c, w_enc.t(), o, mode="sum", per_sample_weights=g)
                     for c, o, g in zip(cols, offsets, gs, strict=True)]
            d_xc = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
        all_cols, all_g = torch.cat(cols), torch.cat(gs)
        if ctx.needs_input_grad[1]:
            by_latent, order = torch.sort(all_cols)
            starts = torch.searchsorted(by_latent, torch.arange(latents, device=xc.device))
            # (latents, d), then viewed as W_enc's (d, latents): the parameter's own layout
            # when W_enc is stored latent-major, as SparseDictionary stores it
            d_w = F.embedding_bag(torch.cat(rows)[order], xc, starts, mode="sum",
                                  per_sample_weights=all_g[order]).t()
        if ctx.needs_input_grad[2]:
            d_b = torch.zeros(latents, dtype=xc.dtype, device=xc.device).index_add_(
                0, all_cols, all_g)
        return d_xc, d_w, d_b, None


def selected(xc: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
             sels: list[Selection]) -> list[torch.Tensor]:
    """Each selection's (m,) pre-activations, differentiable in xc, W_enc and b_enc."""
    out: tuple[torch.Tensor, ...] = _Sampled.apply(xc, w_enc, b_enc, tuple(sels))  # type: ignore[no-untyped-call]
    return list(out)


def decode(sels: list[Selection], codes: list[torch.Tensor],
           w_dec: torch.Tensor) -> list[torch.Tensor]:
    """Per selection, (batch, d): each row's Σ codes_i · W_dec[c_i] over its entries; one
    embedding_bag for all selections, so the backward makes one (latents, d) gradient."""
    before = itertools.accumulate([len(s.cols) for s in sels[:-1]], initial=0)
    offsets = torch.cat([s.offsets + shift for s, shift in zip(sels, before, strict=True)])
    out = F.embedding_bag(torch.cat([s.cols for s in sels]), w_dec, offsets, mode="sum",
                          per_sample_weights=torch.cat(codes).to(w_dec.dtype))
    return list(torch.split(out, [len(s.offsets) for s in sels]))


def to_sparse(sel: Selection, codes: torch.Tensor, latents: int) -> torch.Tensor:
    """The codes as a sparse COO (batch, latents) tensor (for inspection; detached)."""
    index = torch.stack([sel.rows, sel.cols])
    return torch.sparse_coo_tensor(index, codes.detach(), (len(sel.offsets), latents),
                                   check_invariants=False)
