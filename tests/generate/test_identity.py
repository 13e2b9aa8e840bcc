"""A store's identity (actstore.generate.identity): an edited corpus or retrained weights
at the same path get a new store, never the stale one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from actstore import ActivationStore, SpecMismatchError
from actstore.generate.pipeline import generate
from tests.gen_fixtures import save_tiny
from tests.generate.helpers import assert_matches_forward, config

pytestmark = pytest.mark.slow

def test_an_edited_corpus_gets_a_new_store(models: dict[str, str], tmp_path: Path) -> None:
    """The store key follows the corpus's content: the same file reuses its store, an edited
    one (same path) gets a new store instead of the stale activations."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)[:6]]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = config(models["gpt2"], ("transformer.h.0",), tmp_path / "stores",
                 dataset=str(corpus), executor="local", workers=1, max_tokens=640)
    first = generate(cfg)
    again = generate(cfg)
    assert again.reused
    assert again.url == first.url
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed(texts)))
    edited = generate(cfg)
    assert not edited.reused
    assert edited.url != first.url
    tokens = ActivationStore.open(edited.url).read_contexts().column("tokens").to_pylist()
    assert tokens != ActivationStore.open(first.url).read_contexts().column("tokens").to_pylist()
    with pytest.raises(ValueError, match="--dataset-revision names a Hugging Face hub"):
        generate(replace(cfg, dataset_revision="v1"))


def test_retrained_weights_at_the_same_path_get_a_new_store(tmp_path: Path) -> None:
    import transformers

    path = save_tiny("gpt2", tmp_path / "model")
    cfg = config(path, ("transformer.h.0",), tmp_path / "stores", executor="local", workers=1,
                 max_tokens=640)
    first = generate(cfg)
    assert generate(cfg).reused
    model = transformers.GPT2LMHeadModel.from_pretrained(path)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.weight.mul_(1.5)  # trained further, saved in place
    model.save_pretrained(path)
    second = generate(cfg)
    assert not second.reused
    assert second.url != first.url
    assert_matches_forward(second.url, path, {"transformer.h.0": 0}, samples=10)
    with pytest.raises(SpecMismatchError, match=r"model_weights: store has 'sha256:"):
        generate(replace(cfg, out=first.url))
