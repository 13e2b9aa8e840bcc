"""The one scoring rule every peer's dictionary gets (imported by `saelens_run.py` and
`sparsify_run.py` in the peers' environment, so the formulas are the same code): FVU against
the held-out rows' own mean, L0, latents that never fire. A transcoder is scored the same way
on a target: the rows it predicts (`targets`), from the input rows it reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

#: Reconstructs a batch of rows: (x_hat, the latent id of every active code in the batch).
Reconstruct = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: Loads a saved dictionary: (its Reconstruct, its number of latents, its class name).
Load = Callable[[str], tuple[Reconstruct, int, str]]


def score_files(rows: str, paths: Sequence[str], load: Load,
                targets: str | None = None) -> dict[str, Any]:
    """`score_rows` for each saved dictionary in `paths` on the rows of the .npy `rows` (and,
    for transcoders, the target rows of the .npy `targets`, row for row)."""
    x = torch.from_numpy(np.load(rows).astype(np.float32))
    y = None if targets is None else torch.from_numpy(np.load(targets).astype(np.float32))
    out: dict[str, Any] = {}
    for path in paths:
        reconstruct, latents, name = load(path)
        out[path] = {**score_rows(x, reconstruct, latents, y=y), "class": name}
    return out


def score_rows(x: torch.Tensor, reconstruct: Reconstruct, latents: int,
               batch: int = 4096, y: torch.Tensor | None = None) -> dict[str, float]:
    """FVU = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over the rows, where y_hat is
    `reconstruct(x)` and y is x itself (a dictionary) or the given target rows (a transcoder);
    L0 = active codes per row; never_fire = latents active on no row."""
    if y is None:
        y = x
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} input rows but {y.shape[0]} target rows")
    total = float((y - y.mean(0)).pow(2).sum())
    err, active = 0.0, 0
    fired = torch.zeros(latents, dtype=torch.bool)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            y_hat, ids = reconstruct(xb)
            err += float((y_hat - y[i:i + batch]).pow(2).sum())
            fired[ids] = True
            active += len(ids)
    return {"fvu": err / total, "l0": active / len(x), "never_fire": float((~fired).sum())}
