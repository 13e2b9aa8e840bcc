"""Ground truth beside a store: the feature directions a synthetic (toy) store was made from,
which the trainer and evaluation compare dictionaries with (MMCS). `actstore.generate.toy`
writes them; any store may carry them."""

from __future__ import annotations

import torch
from safetensors.torch import load, save

from actstore.store.activation_store import ActivationStore

#: The object beside the store's arrays; tensor `features`, (G, d), unit rows.
GROUND_TRUTH = "ground_truth.safetensors"
#: The model name of every toy store (there is no model: nothing to splice into).
TOY_MODEL = "toy"


def save_ground_truth(store: ActivationStore, features: torch.Tensor) -> None:
    """Write the store's ground-truth features, (G, d)."""
    store.location.put(GROUND_TRUTH, save({"features": features.contiguous()}))


def load_ground_truth(store: ActivationStore) -> torch.Tensor | None:
    """The store's ground-truth features, (G, d), or None when it has none."""
    try:
        data = store.location.get(GROUND_TRUTH)
    except FileNotFoundError:
        return None
    features: torch.Tensor = load(data)["features"]
    return features
