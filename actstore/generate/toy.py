"""`actstore toy`: a store of synthetic activations with known ground truth, after the toy
setup of Sharkey, Braun & Millidge (2022) that the seed paper builds on.

    features   G random unit directions in d dimensions (the ground truth)
    a row      x = Σ_i c_i f_i over the features active in it: feature i is active with
               probability p_i, p_i ∝ decay^i scaled so that Σ p_i = `active` (the mean number
               active per row); coefficients c_i ~ U(0, 1)
    correlated with `correlation` > 0, features come in pairs (2j, 2j+1): when 2j is active,
               2j+1 is made active too with that probability

It is an ordinary store (one hook, `toy`), so the loader and trainer are unchanged; the
features are saved beside it as `ground_truth.safetensors` (tensor `features`, (G, d), unit
rows) for MMCS. The store's key covers every knob, so the same settings reuse the same store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from actstore.loader.ground_truth import TOY_MODEL, save_ground_truth
from actstore.loader.toy_law import ToyLaw
from actstore.store.activation_store import ActivationStore, RowIndex
from actstore.store.spec import Layout, StoreSpec
from actstore.store.writer import write_shard

HOOK = "toy"
#: Rows per "context" of a toy store (there is no text; contexts only group rows).
CONTEXT = 128


@dataclass(frozen=True)
class ToyConfig:
    """`actstore toy --out ROOT [...]`."""

    out: str
    """Root URL; the store goes to `<out>/<key>` (any fsspec URL, as for generate)."""
    d: int = 256
    """Width of the activations."""
    features: int = 512
    """Ground-truth features G (directions)."""
    active: float = 5.0
    """Mean number of features active per row."""
    decay: float = 0.99
    """Feature i's probability is proportional to decay**i (1: all equally likely)."""
    correlation: float = 0.0
    """Probability that feature 2j+1 is active whenever feature 2j is (0: independent)."""
    rows: int = 1 << 20
    """Rows (activations) in the store."""
    seed: int = 0
    """Seeds the features and the rows."""
    dtype: Literal["float32", "bfloat16", "float16", "float8_e4m3", "float8_e5m2"] = "float32"
    """Storage dtype: float32, bfloat16, float16, or 8-bit floats with a scale per row."""
    hierarchy: int = 0
    """Children per parent feature (0: none): children fire only with their parent, each
    with probability 1 / hierarchy when it does (the Matryoshka papers' toy; absorption)."""

    def __post_init__(self) -> None:
        if self.d < 1 or self.features < 1 or self.rows < 1:
            raise ValueError("--d, --features and --rows must be >= 1")
        if not 0 < self.active <= self.features:
            raise ValueError(f"--active must be in (0, features={self.features}]")
        if not 0 < self.decay <= 1 or not 0 <= self.correlation <= 1:
            raise ValueError("--decay must be in (0, 1] and --correlation in [0, 1]")
        self.law  # noqa: B018 -- the law's own checks (hierarchy), before any work

    @property
    def law(self) -> ToyLaw:
        """The knobs that fix the features and the rows (saved beside the ground truth)."""
        return ToyLaw(d=self.d, features=self.features, active=self.active, decay=self.decay,
                      correlation=self.correlation, seed=self.seed, hierarchy=self.hierarchy)


def probabilities(cfg: ToyConfig) -> torch.Tensor:
    """Each (root) feature's chance of being active (`ToyLaw.probabilities`)."""
    return cfg.law.probabilities()


def ground_truth(cfg: ToyConfig) -> torch.Tensor:
    """(G, d) unit rows."""
    return cfg.law.directions()


def coefficients(cfg: ToyConfig, block: int) -> torch.Tensor:
    """(BLOCK, G) non-negative coefficients of the rows [block·BLOCK, (block+1)·BLOCK)."""
    return cfg.law.coefficients(block)


def sample(cfg: ToyConfig, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of the store."""
    return cfg.law.codes(start, stop) @ features


def spec_of(cfg: ToyConfig) -> StoreSpec:
    knobs = (f"d={cfg.d},features={cfg.features},active={cfg.active:g},decay={cfg.decay:g},"
             f"correlation={cfg.correlation:g},rows={cfg.rows},seed={cfg.seed}"
             + (f",hierarchy={cfg.hierarchy}" if cfg.hierarchy else ""))  # older keys unchanged
    return StoreSpec(model=TOY_MODEL, hooks=(HOOK,), dataset=f"toy:{knobs}", context_length=CONTEXT,
                     tokenizer="none", tokenizer_hash="0" * 16, bos_policy="none",
                     dtype=cfg.dtype)


def make_toy_store(cfg: ToyConfig) -> ActivationStore:
    """Create (or finish, or reuse) the toy store for `cfg`; returns it complete."""
    spec = spec_of(cfg)
    url = f"{cfg.out.rstrip('/')}/{spec.key}"
    store = ActivationStore.create(url, spec, Layout.for_sizes(cfg.rows, {HOOK: cfg.d},
                                                               spec.dtype))
    features = ground_truth(cfg)
    save_ground_truth(store, features, law=cfg.law)
    for shard in store.shards_missing():
        a, b = store.layout.shard_rows_range(shard)
        rows = np.arange(a, b)
        index = RowIndex(rows // CONTEXT, (rows % CONTEXT).astype(np.int32),
                         np.zeros(b - a, np.int32))
        write_shard(store, shard, {HOOK: sample(cfg, features, a, b)}, index, "actstore-toy")
    return store
