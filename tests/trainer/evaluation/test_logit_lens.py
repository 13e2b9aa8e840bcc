"""The tokens a latent promotes and suppresses (trainer.evaluation.logit_lens), against the
model's own final norm and unembedding applied to its decoder direction."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import transformers

from actstore.loader.delivery import Normalizer
from actstore.loader.ground_truth import TOY_MODEL
from tests.gen_fixtures import save_tiny, save_tiny_encoder
from trainer.evaluation.config import Member
from trainer.evaluation.logit_lens import token_effects


def _store(model: str) -> Any:
    return SimpleNamespace(spec=SimpleNamespace(model=model, model_revision=None))


def _member(w_dec: torch.Tensor, scale: float) -> Member:
    return Member("sae", SimpleNamespace(W_dec=w_dec), Normalizer(None, scale),  # type: ignore[arg-type]
                  {})


@pytest.mark.parametrize(("kind", "norm"), [("gpt2", "transformer.ln_f"),
                                            ("llama", "model.norm")])
def test_direct_path_matches_the_models_norm_and_unembedding(tmp_path: Path, kind: str,
                                                             norm: str) -> None:
    path = save_tiny(kind, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    final = model.get_submodule(norm)
    torch.manual_seed(1)
    with torch.no_grad():  # a norm weight that matters; no bias (the direct path drops it)
        final.weight.copy_(torch.randn_like(final.weight))
        if getattr(final, "bias", None) is not None:
            final.bias.zero_()
    model.save_pretrained(path)
    w_dec = torch.randn(5, 32)
    found, what = token_effects([_member(w_dec, 2.0)], _store(path), 7)
    assert "unembedding" in what
    fx = found["sae"]
    with torch.no_grad():  # the norm is scale-free: a large multiple drowns its epsilon
        want = model.get_output_embeddings()(final(1e3 * w_dec / 2.0))
    assert torch.equal(fx.up_ids, want.topk(7, dim=1).indices)
    assert torch.equal(fx.down_ids, want.topk(7, dim=1, largest=False).indices)
    # the same logits up to one positive factor per latent (the norm's 1/σ)
    ratio = want.gather(1, fx.up_ids) / fx.up_values
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-3)
    assert bool((ratio > 0).all())


def test_no_tokens_where_there_is_no_causal_lm(tmp_path: Path) -> None:
    member = _member(torch.randn(3, 32), 1.0)
    assert token_effects([member], _store(TOY_MODEL), 5) == ({}, "skipped (a toy store has "
                                                                 "no model)")
    encoder = save_tiny_encoder(tmp_path)
    assert "is not a causal LM" in token_effects([member], _store(encoder), 5)[1]
    missing = token_effects([member], _store(str(tmp_path / "nowhere")), 5)
    assert missing[0] == {}
    assert "did not load" in missing[1]
    assert token_effects([member], _store(TOY_MODEL), 0)[1] == "skipped (--logit-tokens 0)"
