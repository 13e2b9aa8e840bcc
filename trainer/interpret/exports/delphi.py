"""`actstore interpret --delphi-export DIR`: the sampled latents' activations on the held-out
contexts in EleutherAI delphi's cache layout, so that delphi's own pipeline (its
`LatentDataset`, explainers and scorers) runs on an actstore run:

    DIR/<method>/0_<latents-1>.safetensors   one split per method (dictionary or baseline):
        tokens       (contexts, context length) the held-out contexts' token ids
        locations    (n, 3) [context, position, latent id] of every non-zero activation
        activations  (n,) its value
    DIR/<method>/config.json                 delphi's cache config (the tokenizer as model_name)

Only the latents interpret sampled are written (their ids kept): delphi reads them as a
sparse selection of the method's latents.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import safetensors.numpy

from trainer.interpret.corpus import Corpus, Method, Windows


def context_grid(windows: Windows) -> tuple[np.ndarray, np.ndarray]:
    """(contexts, length) token ids of the held-out contexts (0 where a position has no row),
    and each row's context index into it."""
    row_window = np.repeat(np.arange(len(windows)), np.diff(windows.starts))
    ids, batch = np.unique(windows.context[row_window], return_inverse=True)
    length = int(windows.position.max()) + 1 if len(windows.position) else 0
    grid = np.zeros((len(ids), length), np.int64)
    grid[batch, windows.position] = windows.tokens
    return grid, batch


def method_split(method: Method, batch: np.ndarray, position: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """One method's locations and activations (latent ids as delphi counts them: from 0)."""
    rows, cols = np.nonzero(method.acts)
    latents = np.asarray(method.latents, np.int64)[cols]
    return {"locations": np.stack([batch[rows], position[rows].astype(np.int64), latents],
                                  axis=1).astype(np.int64),
            "activations": method.acts[rows, cols].astype(np.float32)}


def write_delphi_cache(corpus: Corpus, out: Path) -> list[Path]:
    """Write the layout of the module's docstring; returns the files written."""
    grid, batch = context_grid(corpus.windows)
    config = {"dataset_repo": corpus.store.url, "dataset_split": "held-out",
              "dataset_name": "", "dataset_column": "tokens", "batch_size": len(grid),
              "cache_ctx_len": grid.shape[1], "ctx_len": grid.shape[1],
              "n_tokens": len(corpus.windows.tokens), "n_splits": 1,
              "model_name": corpus.store.spec.tokenizer}
    written = []
    for method in corpus.methods:
        folder = out / method.name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"0_{method.total - 1}.safetensors"
        tmp = path.with_suffix(".tmp")
        safetensors.numpy.save_file({"tokens": grid, **method_split(
            method, batch, corpus.windows.position)}, str(tmp))
        os.replace(tmp, path)
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        written.append(path)
    return written
