"""Helpers of the generation tests: a small `generate` config and the check that stored
rows equal a plain forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from actstore import ActivationStore
from actstore.generate.config import GenerateConfig
from tests.gen_fixtures import reference_hidden


def config(model: str, hooks: tuple[str, ...], out: Path, **kw: object) -> GenerateConfig:
    base = {"dataset": "builtin:pydoc", "context_length": 32, "max_tokens": 2000,
            "workers": 2, "cpus_per_worker": 1.0, "batch_size": 4, "progress": False}
    return GenerateConfig(model=model, hooks=hooks, out=str(out), **{**base, **kw})  # type: ignore[arg-type]


def assert_matches_forward(url: str, model: str, layers: dict[str, int],
                           samples: int = 40) -> None:
    """Sampled rows equal a plain, unpadded forward pass of their context (bf16 rounding)."""
    store = ActivationStore.open(url)
    contexts = store.read_contexts().column("tokens").to_pylist()
    idx = store.read_index(0, store.num_rows)
    rows = np.random.default_rng(1).choice(store.num_rows, samples, replace=False)
    cache: dict[tuple[int, int], torch.Tensor] = {}
    for hook, layer in layers.items():
        acts = store.read_torch(hook, 0, store.num_rows)
        for r in rows:
            ctx, pos = int(idx.context[r]), int(idx.position[r])
            if (ctx, layer) not in cache:
                cache[ctx, layer] = reference_hidden(model, contexts[ctx], layer)
            want = cache[ctx, layer][pos]
            torch.testing.assert_close(acts[r].float(), want.bfloat16().float(),
                                       rtol=2**-7, atol=1e-5)
            assert contexts[ctx][pos] == idx.token[r]
