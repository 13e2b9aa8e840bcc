"""Crosscoders (Lindsey et al. 2024): one set of latents read from and written to several
activation sites (layers of one model, or one layer of two models: model diffing).

A crosscoder is an SAE over the sites side by side (`kind="crosscoder"`, `sites` = their
widths, `d_model` = their sum), so every step, kernel, latent slice, checkpoint and the memory
model are the SAE's own:

    x      = [x_1' | x_2' | … | x_L']           each site normalised with its own statistics
    z      = act((x - b_dec) @ W_enc + b_enc)   W_enc (Σd, n): an encoder per site, summed
    x_hat  = z @ W_dec + b_dec                  W_dec (n, Σd): a decoder block per site
    loss   = Σ_l ‖x_l - x_hat_l‖² + sparsity    the squared error summed over the sites

Sparsity is either TopK / BatchTopK (and Matryoshka, JumpReLU) over the shared code, with the
SAE's unit-norm constraint on each latent's whole decoder row (its blocks side by side), or
Lindsey et al.'s: relu with the L1 of each code weighted by the sum over sites of its decoder
block norms, Σ_i z_i Σ_l ‖W_dec[i, site l]‖. That penalty already fixes the scale (a latent
cannot shrink its code by growing its decoder), so, as in the paper, a relu crosscoder's
decoder rows are not renormalised; what the penalty favours is a latent whose decoder lives in
few sites, which is what makes site-specific latents (in model diffing: one model's) visible.
"""

from __future__ import annotations

import torch

from trainer.dictionary.config import DictionaryConfig

__all__ = ["free_norms", "relative_norms", "site_bounds", "site_norms"]


def site_bounds(sites: tuple[int, ...]) -> list[tuple[int, int]]:
    """Each site's [start, stop) in the concatenated width."""
    ends = torch.tensor(sites).cumsum(0).tolist()
    return [(e - w, e) for e, w in zip(ends, sites, strict=True)]


def site_norms(w_dec: torch.Tensor, sites: tuple[int, ...]) -> torch.Tensor:
    """Per latent, the norm of its decoder block at each site, (latents, L)."""
    return torch.stack([torch.linalg.vector_norm(w_dec[:, a:b], dim=1)
                        for a, b in site_bounds(sites)], 1)


def relative_norms(w_dec: torch.Tensor, sites: tuple[int, ...]) -> torch.Tensor:
    """Per latent, each site's share of its decoder norms, ‖d_l‖ / Σ_m ‖d_m‖, (latents, L)
    (rows sum to 1; a latent with a zero decoder shares evenly). With two sites the second
    column is model diffing's ‖d_B‖ / (‖d_A‖ + ‖d_B‖)."""
    norms = site_norms(w_dec.detach().float(), sites)
    total = norms.sum(1, keepdim=True)
    even = torch.full_like(norms, 1 / len(sites))
    return torch.where(total > 0, norms / total.clamp_min(1e-30), even)


def free_norms(cfg: DictionaryConfig) -> bool:
    """Whether the decoder rows go unconstrained: a relu crosscoder's, whose L1 penalty is
    weighted by its decoder norms (Lindsey et al.)."""
    return cfg.kind == "crosscoder" and cfg.arch == "relu"
