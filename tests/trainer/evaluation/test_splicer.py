"""Loss recovered with a dictionary spliced into real (tiny, random) models: a causal LM (CE,
KL) and an encoder without an LM head (final-state MSE, MiniLM's path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
import torch.nn.functional as F

from actstore import ActivationStore
from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from actstore.loader.delivery import Normalizer
from actstore.loader.holdout import held_out_contexts
from actstore.model.capture import load_model
from tests.gen_fixtures import save_tiny, save_tiny_encoder
from tests.trainer.helpers import config
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import load_dictionary
from trainer.evaluation.splicer import Splicer
from trainer.training.logs import read_metrics
from trainer.training.train import train

pytestmark = pytest.mark.slow
HOOK = "transformer.h.1"
ENCODER_HOOK = "encoder.layer.1"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A store of a tiny GPT-2 and one of a tiny BERT encoder."""
    root = tmp_path_factory.mktemp("splice")
    urls = {}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        for kind, model, hook in (("lm", save_tiny("gpt2", root), HOOK),
                                  ("encoder", save_tiny_encoder(root), ENCODER_HOOK)):
            urls[kind] = generate(GenerateConfig(
                model=model, hooks=(hook,), dataset="builtin:pydoc", out=str(root / "stores"),
                context_length=16, max_tokens=4096, workers=1, batch_size=8,
                progress=False)).url
    finally:
        ray.shutdown()
    return urls


def identity(d: int) -> SparseDictionary:
    """relu(x) - relu(-x) = x: a perfect reconstruction with 2d unit-norm latents."""
    sae = SparseDictionary(DictionaryConfig(arch="relu", d_model=d, latents=2 * d, l1=0.0))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def empty(d: int, norm: Normalizer) -> SparseDictionary:
    """A dictionary that decodes every input to exactly 0 in raw space."""
    sae = SparseDictionary(DictionaryConfig(arch="relu", d_model=d, latents=8, l1=0.0))
    with torch.no_grad():
        sae.W_dec.zero_()
        if norm.mean is not None:
            sae.b_dec.copy_(-norm.mean * norm.scale)
    return sae


def test_perfect_and_empty_reconstructions_bound_loss_recovered(stores: dict[str, str]) -> None:
    store = ActivationStore.open(stores["lm"])
    norm = Normalizer.of(store, HOOK, "center_scale")
    splicer = Splicer(store, HOOK, norm, contexts=8, device=torch.device("cpu"))
    assert splicer.is_lm
    perfect, none = splicer.evaluate([identity(32), empty(32, norm)])
    assert perfect["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["kl"] == pytest.approx(0.0, abs=1e-5)
    assert perfect["ce_spliced"] == pytest.approx(perfect["ce_clean"], abs=1e-5)
    assert none["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert none["ce_spliced"] == pytest.approx(none["ce_zero"], abs=1e-5)
    assert none["ce_zero"] > none["ce_clean"]


def test_encoder_path_is_bounded_by_perfect_and_empty_reconstructions(
        stores: dict[str, str]) -> None:
    store = ActivationStore.open(stores["encoder"])
    # "scale" so the empty dictionary decodes to exactly 0: the next layer's LayerNorm would
    # blow the float rounding of -mean + mean up to unit scale
    norm = Normalizer.of(store, ENCODER_HOOK, "scale")
    splicer = Splicer(store, ENCODER_HOOK, norm, contexts=8, device=torch.device("cpu"))
    assert not splicer.is_lm
    noisy = identity(32)
    with torch.no_grad():
        # rows moved by ~0.3 of their unit norm: worse than perfect, far better than nothing
        noise = torch.randn(noisy.W_dec.shape, generator=torch.Generator().manual_seed(0))
        noisy.W_dec.add_(noise * 0.05)
    perfect, none, partial = splicer.evaluate([identity(32), empty(32, norm), noisy])
    assert perfect["final_mse_spliced"] == pytest.approx(0.0, abs=1e-8)
    assert perfect["final_state_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert none["final_mse_spliced"] == pytest.approx(none["final_mse_zero"], rel=1e-5)
    assert none["final_state_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert none["final_mse_zero"] > 0
    assert 0 < partial["final_state_recovered"] < 1


def reference_ce(store: ActivationStore, run: Path, name: str, contexts: int) -> float:
    """CE of the model with the saved dictionary spliced in, computed from the files alone
    (the model's own loss with a plain forward hook), not through Splicer."""
    sae, norm, _ = load_dictionary(run / "dictionaries" / name)
    model = load_model(store.spec.model, None, torch.float32, torch.device("cpu"))
    ids = held_out_contexts(store, contexts)

    def splice(_m: torch.nn.Module, _a: object, out: torch.Tensor) -> torch.Tensor:
        return norm.invert(sae.decode(sae.encode(norm.apply(out))))
    handle = dict(model.named_modules())[HOOK].register_forward_hook(splice)
    try:
        with torch.inference_mode():
            logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))


def test_training_logs_loss_recovered(stores: dict[str, str], tmp_path: Path) -> None:
    result = train(config(stores["lm"], tmp_path, hook=HOOK, latents=(64,), k=(4,),
                          tokens=1600, eval_contexts=4, eval_every=50, checkpoint_every=50,
                          log_every=25))
    evals = [r for r in read_metrics(tmp_path) if "eval" in r]
    assert [r["step"] for r in evals] == [50, 100]
    final = result.final[0]
    store = ActivationStore.open(stores["lm"])
    assert final["ce_spliced"] == pytest.approx(
        reference_ce(store, tmp_path, "topk-n64-k4", 4), rel=1e-5)
    assert final["kl"] >= 0


@pytest.mark.parametrize(("kind", "hook"), [("lm", HOOK), ("encoder", ENCODER_HOOK)])
def test_chunked_evaluation_equals_one_chunk(kind: str, hook: str, stores: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out contexts go through in chunks (bounded memory on a large vocabulary); one
    context per chunk gives the same metrics as all contexts at once."""
    store = ActivationStore.open(stores[kind])
    norm = Normalizer.of(store, hook, "scale")
    torch.manual_seed(0)
    noisy = identity(32)
    with torch.no_grad():
        # rows moved by ~0.3 of their unit norm: worse than perfect, far better than nothing
        noise = torch.randn(noisy.W_dec.shape, generator=torch.Generator().manual_seed(0))
        noisy.W_dec.add_(noise * 0.05)
    whole = Splicer(store, hook, norm, contexts=8, device=torch.device("cpu"))
    assert len(whole.chunks) == 1
    monkeypatch.setattr("trainer.evaluation.splicer.CHUNK_ELEMENTS", 1)
    chunked = Splicer(store, hook, norm, contexts=8, device=torch.device("cpu"))
    assert len(chunked.chunks) == 8
    want, got = whole.evaluate([noisy])[0], chunked.evaluate([noisy])[0]
    assert got.keys() == want.keys()
    ratios = {"loss_recovered", "final_state_recovered"}  # differences of near-equal losses
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-3 if key in ratios else 1e-7), key
