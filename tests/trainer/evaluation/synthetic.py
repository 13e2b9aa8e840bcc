"""A synthetic eval report of one wide dictionary, written by the report's own writer from
random small data: a real eval of 16k latents takes minutes on a CPU, the browser's files
are the same whatever made the numbers. Used by tests/trainer/evaluation/test_browser.py and
benchmarks/browser.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from actstore.loader.ground_truth import TOY_MODEL
from actstore.store.activation_store import RowIndex
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.examples import HIST_EDGES, TopActivations
from trainer.evaluation.logit_lens import TokenEffects
from trainer.evaluation.run import Evaluation

NAME = "big"


class StubStore:
    """What the report reads of a store: its spec (a toy model: token ids shown as `#id`),
    row index and contexts table, rows numbered context by context."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens
        self.spec = SimpleNamespace(model=TOY_MODEL, tokenizer=TOY_MODEL, model_revision=None)
        self.url = "memory://synthetic"

    def read_index(self, start: int, stop: int) -> RowIndex:
        r = np.arange(start, stop)
        width = self.tokens.shape[1]
        return RowIndex(r // width, (r % width).astype(np.int32),
                        self.tokens.reshape(-1)[r].astype(np.int32))

    def read_contexts(self, columns: list[str] | None = None) -> pa.Table:  # noqa: ARG002
        return pa.table({"context_id": np.arange(len(self.tokens)),
                         "tokens": pa.array(self.tokens.tolist(), type=pa.list_(pa.int32()))})


def _sorted_examples(gen: np.random.Generator, latents: int, width: int, rows: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    picked = gen.integers(0, rows, (latents, width))
    values = -np.sort(-gen.gamma(2.0, 1.0, (latents, width)).astype(np.float32), axis=1)
    return picked, values


def synthetic_report(out: Path, latents: int, *, rows: int = 1 << 14, top: int = 16,
                     sample: int = 12, vocab: int = 5000, window: int = 12, seed: int = 0
                     ) -> tuple[Evaluation, EvalConfig, Any, int]:
    """(the evaluation, its config, the store, the token id only the last latent's top
    examples fire on: `vocab - 1`)."""
    gen = np.random.default_rng(seed)
    tokens = gen.integers(0, vocab - 1, (rows // 64, 64))
    special = vocab - 1
    top_rows, top_values = _sorted_examples(gen, latents, top, rows)
    top_rows[-1] = np.arange(top) * 97 + 5  # the last latent: rows given the special token
    tokens.reshape(-1)[top_rows[-1]] = special
    sample_rows, sample_values = _sorted_examples(gen, latents, sample, rows)
    sample_values *= 0.5
    fired = top + sample + gen.integers(0, 200, latents)
    bins = len(HIST_EDGES) - 1
    hist = gen.multinomial(fired, np.exp(-0.5 * ((np.arange(bins) - 13) / 2.5) ** 2)
                           / np.exp(-0.5 * ((np.arange(bins) - 13) / 2.5) ** 2).sum())
    up = gen.integers(0, vocab, (latents, 10))
    down = gen.integers(0, vocab, (latents, 10))
    logits = -np.sort(-np.abs(gen.normal(size=(latents, 10))).astype(np.float32), axis=1)
    t = torch.from_numpy
    tops = TopActivations(t(top_rows), t(top_values), t(fired), t(hist), rows,
                          t(sample_rows), t(sample_values))
    effects = TokenEffects(t(up), t(logits), t(down), t(-logits))
    meta = {"run": "synthetic", "store": "memory://synthetic", "store_key": "synthetic",
            "hook": "h", "model": TOY_MODEL, "held_out": True, "rows": rows,
            "held_out_shards": [0], "ground_truth": False, "spliced": "skipped (synthetic)",
            "imported": {}, "logit_lens": "synthetic token ids", "settings": {}}
    ev = Evaluation(meta, [{"method": NAME, "k": 32, "l0": 32.0, "fvu": 0.1}],
                    {NAME: {"fvu": 0.1, "l0": 32.0, "fired_fraction": 1.0}}, {}, [],
                    {NAME: tops}, [], {NAME: effects})
    cfg = EvalConfig(run="synthetic", out=str(out), top=top, quantile_examples=sample,
                     window=window)
    return ev, cfg, StubStore(tokens), special
