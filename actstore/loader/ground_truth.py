"""Ground truth beside a store: the feature directions a synthetic (toy) store was made from,
which the trainer and evaluation compare dictionaries with (MMCS), and for a toy store its
generative law (`toy_law.ToyLaw`, in the file's metadata) with each feature's parent, from which
evaluation regenerates the true codes of any row (absorption). `actstore.generate.toy` writes
them; any store may carry directions alone."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from actstore.loader.toy_law import ToyLaw
from actstore.store.activation_store import ActivationStore

#: The object beside the store's arrays; tensor `features`, (G, d), unit rows.
GROUND_TRUTH = "ground_truth.safetensors"
#: The model name of every toy store (there is no model: nothing to splice into).
TOY_MODEL = "toy"


def save_ground_truth(store: ActivationStore, features: torch.Tensor,
                      law: ToyLaw | None = None) -> None:
    """Write the store's ground-truth features, (G, d), and the law its rows were drawn from
    (with each feature's parent, `parents`: -1 for a root)."""
    tensors = {"features": features.contiguous()}
    if law is not None:
        tensors["parents"] = law.parents()
    store.location.put(GROUND_TRUTH, save(tensors, metadata={"law": law.to_json()}
                                          if law is not None else None))


@dataclass(frozen=True)
class Truth:
    """A store's ground truth in full."""

    features: torch.Tensor
    """(G, d) unit rows."""
    law: ToyLaw | None
    """How the rows were drawn (None: directions only)."""

    @property
    def parents(self) -> torch.Tensor | None:
        """(G,) each feature's parent (-1: a root), when the law has a hierarchy."""
        return self.law.parents() if self.law is not None and self.law.hierarchy else None


def load_truth(store: ActivationStore) -> Truth | None:
    """The store's ground truth with its law, or None when it has none."""
    try:
        data = store.location.get(GROUND_TRUTH)
    except FileNotFoundError:
        return None
    # safetensors' header: an 8-byte little-endian length, then JSON with `__metadata__`
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    law = header.get("__metadata__", {}).get("law")
    return Truth(load(data)["features"], ToyLaw.from_json(law) if law else None)


def load_ground_truth(store: ActivationStore) -> torch.Tensor | None:
    """The store's ground-truth features, (G, d), or None when it has none."""
    try:
        data = store.location.get(GROUND_TRUTH)
    except FileNotFoundError:
        return None
    features: torch.Tensor = load(data)["features"]
    return features
