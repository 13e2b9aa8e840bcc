"""Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024): the BatchTopK dictionary whose
nested prefixes of latents, widths m_1 < m_2 < … < n, must each reconstruct the target alone:

    loss = ‖y - ŷ‖² + w Σ_{i < last} ‖y - (b_dec + Σ_{c < m_i} z_c W_dec[c])‖²  (+ AuxK)

so general features settle in the early latents instead of being absorbed by specific ones.
The codes are BatchTopK's (k · B per batch, the inference threshold learned alike); the
prefix reconstructions are cumulative sums of the decodes of each band [m_{i-1}, m_i), so the
prefixes cost one decode in all. Under latent slicing each rank decodes the part of every band
it holds and the bands are summed over the tp ranks once. SAELens' `matryoshka_batchtopk`
(its default: AuxK over all latents, no per-level AuxK) is the reference in the tests, at
w = 1 (its sum over the prefixes); our default w is lower (`PREFIX_WEIGHT`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from trainer.dictionary import kernels

__all__ = ["bands", "default_widths", "prefix_loss", "sparse_prefix_loss"]

#: The default nesting: one inner prefix of n/4 latents, then all n. Five doubling levels
#: (n/16 up) at full weight cost held-out FVU far beyond BatchTopK's in the quickstart's run;
#: one quarter prefix at `PREFIX_WEIGHT` stays within the issue's bound at both sizes and run
#: lengths swept and keeps the lower absorption on the hierarchical toy
#: (benchmarks/matryoshka_sweep.py; the table in trainer/README.md).
DEFAULT_PREFIX = 4
#: Each inner prefix's loss weight, the full reconstruction's being 1 (SAELens: 1). 0.1 keeps
#: the toy's absorption where 0.25 had it, and at 4x the training steps 0.25 misses the FVU
#: bound where 0.1 stays within it.
PREFIX_WEIGHT = 0.1


def default_widths(latents: int) -> tuple[int, ...]:
    """The default nesting ending at `latents`: n/4 (at least 1) and n."""
    return tuple(sorted({max(1, latents // DEFAULT_PREFIX), latents}))


def check_widths(widths: Sequence[int], latents: int) -> tuple[int, ...]:
    """The nesting with `latents` as its last level; refused unless strictly increasing."""
    out = tuple(widths) if widths and widths[-1] == latents else (*widths, latents)
    if any(w < 1 for w in out) or any(a >= b for a, b in itertools.pairwise(out)):
        raise ValueError(f"--widths must increase strictly from >= 1 to at most --latents "
                         f"{latents}, got {list(widths)}")
    return out


def bands(widths: Sequence[int], start: int, stop: int) -> list[tuple[int, int]]:
    """Local [a, b) column ranges of this slice's latents [start, stop) in each band
    [m_{i-1}, m_i) of the nesting (empty ranges where it holds none of a band)."""
    out, previous = [], 0
    for w in widths:
        a, b = max(previous, start), min(w, stop)
        out.append((a - start, max(a, b) - start))
        previous = w
    return out


def _loss(partials: torch.Tensor, base: torch.Tensor, target: torch.Tensor,
          over_slices: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Σ over the inner prefixes of their squared error (per token, summed over d): the
    partial decodes of every band but the last, (bands - 1, B, d), summed over slices."""
    prefixes = over_slices(partials).cumsum(0) + base
    return ((prefixes - target) ** 2).sum(-1).mean(-1).sum()


def prefix_loss(z: torch.Tensor, w_dec: torch.Tensor, base: torch.Tensor, target: torch.Tensor,
                *, widths: Sequence[int], start: int,
                over_slices: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The dense step's prefix term: z (B, local latents), base = b_dec (+ a skip's term)."""
    inner = bands(widths, start, start + z.shape[1])[:-1]
    if not inner:
        return target.new_zeros(())
    partials = torch.stack([z[:, a:b] @ w_dec[a:b] for a, b in inner])
    return _loss(partials, base, target, over_slices)


def sparse_prefix_loss(sel: kernels.Selection, codes: torch.Tensor, w_dec: torch.Tensor,
                       base: torch.Tensor, target: torch.Tensor, *, widths: Sequence[int],
                       start: int, stop: int,
                       over_slices: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The sparse step's prefix term from the selected entries (local latent ids `sel.cols`)
    and their codes: one embedding_bag for every band."""
    inner = bands(widths, start, stop)[:-1]
    if not inner:
        return target.new_zeros(())
    batch = len(sel.offsets)
    parts, weights = [], []
    for a, b in inner:
        mask = (sel.cols >= a) & (sel.cols < b)
        parts.append(kernels.from_sorted(sel.rows[mask], sel.cols[mask], sel.values[mask], batch))
        weights.append(codes[mask])
    partials = torch.stack(kernels.decode(parts, weights, w_dec))
    return _loss(partials, base, target, over_slices)
