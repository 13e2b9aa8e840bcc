"""A store of `MODULE:input` hooks: generated, verified and read back like any other."""

from __future__ import annotations

from pathlib import Path

import zarr

from actstore import ActivationStore
from actstore.generate.pipeline import generate
from actstore.store.verify import verify
from tests.generate.helpers import assert_matches_forward, config


def test_a_block_input_is_the_previous_block_output(models: dict[str, str],
                                                    tmp_path: Path) -> None:
    """Every architecture: block 1's input rows equal block 0's output in a plain forward pass
    (the residual stream between them), stored beside an output hook of the same pass."""
    for kind, path in models.items():
        block = {"gpt2": "transformer.h.{}", "gpt_neox": "gpt_neox.layers.{}",
                 "llama": "model.layers.{}"}[kind]
        hooks = (block.format(1) + ":input", block.format(0))
        result = generate(config(path, hooks, tmp_path / kind, workers=None,
                                 cpus_per_worker=None, executor="local"))
        assert verify(ActivationStore.open(result.url)).ok
        assert_matches_forward(result.url, path, {hooks[0]: 0, hooks[1]: 0}, samples=12)
        # plain zarr reads the array, named after the hook as written
        group = zarr.open_group(result.url, mode="r")
        array = group[f"activations/{hooks[0]}"]
        assert array.shape == (ActivationStore.open(result.url).num_rows,
                               ActivationStore.open(result.url).layout.d_model[hooks[0]])
