"""The one scoring rule every peer's dictionary gets (imported by `saelens_run.py` and
`sparsify_run.py` in the peers' environment, so the formulas are the same code): FVU against
the held-out rows' own mean, L0, latents that never fire."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

#: Reconstructs a batch of rows: (x_hat, the latent id of every active code in the batch).
Reconstruct = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: Loads a saved dictionary: (its Reconstruct, its number of latents, its class name).
Load = Callable[[str], tuple[Reconstruct, int, str]]


def score_files(rows: str, paths: Sequence[str], load: Load) -> dict[str, Any]:
    """`score_rows` for each saved dictionary in `paths` on the rows of the .npy `rows`."""
    x = torch.from_numpy(np.load(rows).astype(np.float32))
    out: dict[str, Any] = {}
    for path in paths:
        reconstruct, latents, name = load(path)
        out[path] = {**score_rows(x, reconstruct, latents), "class": name}
    return out


def score_rows(x: torch.Tensor, reconstruct: Reconstruct, latents: int,
               batch: int = 4096) -> dict[str, float]:
    """FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the rows; L0 = active codes per
    row; never_fire = latents active on no row."""
    total = float((x - x.mean(0)).pow(2).sum())
    err, active = 0.0, 0
    fired = torch.zeros(latents, dtype=torch.bool)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            x_hat, ids = reconstruct(xb)
            err += float((x_hat - xb).pow(2).sum())
            fired[ids] = True
            active += len(ids)
    return {"fvu": err / total, "l0": active / len(x), "never_fire": float((~fired).sum())}
