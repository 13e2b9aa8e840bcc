"""Initial values: the decoder's directions (reproducible slice by slice) and the centre of
the data that the pre-encoder bias starts at."""

from __future__ import annotations

import torch

#: Latents per block of the initial decoder. Each block is drawn from its own seeded generator,
#: so a slice of the latents is drawn alone and equals the same rows of the whole dictionary.
INIT_BLOCK = 4096


def initial_decoder(d: int, start: int, stop: int, seed: int) -> torch.Tensor:
    """Rows [start, stop) of the initial decoder: uniform directions, unit norm."""
    out = torch.empty(stop - start, d)
    for block in range(start // INIT_BLOCK, -(-stop // INIT_BLOCK)):
        first = block * INIT_BLOCK
        g = torch.Generator().manual_seed((seed + block * 0x9E3779B97F4A7C15) % 2**63)
        rows = torch.empty(INIT_BLOCK, d).uniform_(-1, 1, generator=g)
        a, b = max(start, first), min(stop, first + INIT_BLOCK)
        out[a - start:b - start] = rows[a - first:b - first]
    return out.div_(out.norm(dim=1, keepdim=True))


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
