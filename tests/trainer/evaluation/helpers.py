"""Helpers of the evaluation tests: a run holding one dictionary whose top rows are known
(latent j is coordinate j) on a store whose contexts straddle its shards."""

from __future__ import annotations

from pathlib import Path

import torch

from actstore.loader.delivery import Normalizer
from actstore.store.activation_store import ActivationStore
from actstore.store.spec import StorageDtype
from tests.helpers import HOOKS, Expected, fill_store, straddling_store
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import save_dictionary

HOOK = HOOKS[0]  # d_model 12


def _neuron_dictionary(d: int) -> SparseDictionary:
    """codes = relu(x), x̂ = codes: latent j is coordinate j, so its top rows are known."""
    sae = SparseDictionary(DictionaryConfig("relu", d, d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _run(tmp_path: Path, holdout_fraction: float, url: str | None = None,
         dtype: StorageDtype = "bfloat16") -> tuple[Path, ActivationStore, Expected]:
    store = straddling_store(url or str(tmp_path / "store"), dtype)
    want = fill_store(store)
    run = tmp_path / "run"
    source = {"store": store.url, "store_key": store.key, "hook": HOOK,
              "train_config": {"holdout": holdout_fraction}}
    save_dictionary(run / "dictionaries" / "neurons-relu", _neuron_dictionary(12),
                    Normalizer(None, 1.0), source)
    return run, store, want
