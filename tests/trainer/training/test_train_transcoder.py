"""`actstore train --kind transcoder`: a dictionary that reads one hook and predicts another
(here 12 wide to 5 wide), trained, saved, resumed and refused like an SAE."""

from __future__ import annotations

from pathlib import Path

import pytest

from actstore import ActivationStore
from actstore.loader.delivery import Normalizer
from tests.helpers import HOOKS
from tests.trainer.helpers import assert_same_weights, config, curves, die_at_step
from trainer.dictionary.export import load_dictionary, target_normalizer
from trainer.training.config import TrainConfig
from trainer.training.logs import read_metrics
from trainer.training.train import train


def transcoder(store: str, out: Path, **kw: object) -> TrainConfig:
    return config(store, out, kind="transcoder", target_hook=HOOKS[1], **kw)


def fvu(store: str, path: Path) -> float:
    """Held-in FVU of a saved transcoder on every row of the store, from the raw rows: an
    independent recomputation of what the training metric measures."""
    tc, norm, _ = load_dictionary(path)
    target = target_normalizer(path)
    s = ActivationStore.open(store)
    x = s.read_torch(HOOKS[0], 0, s.num_rows).float()
    y = s.read_torch(HOOKS[1], 0, s.num_rows).float()
    y_hat = target.invert(tc.reconstruct(norm.apply(x))[0])
    return float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


@pytest.mark.parametrize(("arch", "skip", "files"), [
    ("topk", True, ["cfg.json", "latent_density.pt", "model.safetensors"]),
    ("relu", False, ["cfg.json", "latent_density.pt", "model.safetensors", "saelens"])])
def test_a_transcoder_learns_to_predict_its_target_and_is_saved_whole(
        store: str, tmp_path: Path, arch: str, skip: bool, files: list[str]) -> None:
    knobs: dict[str, object] = {"k": (2,)} if arch == "topk" else {"k": (), "l1": (0.01,)}
    result = train(transcoder(store, tmp_path, arch=arch, skip=skip, **knobs))
    lines = [r for r in read_metrics(tmp_path) if "dictionaries" in r]
    (name,) = lines[0]["dictionaries"]
    assert lines[-1]["dictionaries"][name]["fvu"] < lines[0]["dictionaries"][name]["fvu"]
    (d,) = result.dictionaries
    tc, _, cfg = load_dictionary(d)
    assert (tc.cfg.kind, tc.cfg.d_model, tc.cfg.out_width, tc.cfg.skip) == (
        "transcoder", 12, 5, skip)
    assert cfg["source"]["target_hook"] == HOOKS[1]
    assert sorted(p.name for p in d.iterdir()) == files
    # the saved transcoder predicts the target better than its mean does
    assert fvu(store, d) < 1.0
    assert isinstance(target_normalizer(d), Normalizer)


def test_a_resumed_transcoder_replays_the_uninterrupted_run(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = tmp_path / "whole"
    settings = {"arch": "batchtopk", "skip": True}
    train(transcoder(store, whole, **settings))
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        die_at_step(m, 28)
        with pytest.raises(KeyboardInterrupt):
            train(transcoder(store, cut, **settings))
    train(transcoder(store, cut, resume=True, **settings))
    assert curves(cut) == curves(whole)
    assert_same_weights(cut, whole)


@pytest.mark.parametrize(("kw", "message"), [
    ({"kind": "transcoder"}, "needs --target-hook"),
    ({"target_hook": HOOKS[1]}, "are a transcoder's"),
    ({"skip": True}, "are a transcoder's"),
])
def test_settings_that_do_not_make_a_transcoder_are_refused(
        store: str, tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(store, tmp_path, **kw)


def test_a_target_hook_the_store_lacks_is_named(store: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--target-hook 'nope' is not in store"):
        train(config(store, tmp_path, kind="transcoder", target_hook="nope"))


def test_the_memory_model_counts_the_target_and_the_skip() -> None:
    from trainer.training.memory import dictionary_memory

    sae = dictionary_memory(d=768, latents=1 << 14, k=32, batch=4096)
    tc = dictionary_memory(d=768, latents=1 << 14, k=32, batch=4096, d_out=3072)
    skip = dictionary_memory(d=768, latents=1 << 14, k=32, batch=4096, d_out=3072, skip=True)
    # parameters: latents x (d_in + d_out + 1) + d_out (+ d_in x d_out), float32
    assert sae.parameters == 4 * ((1 << 14) * (768 + 768 + 1) + 768)
    assert tc.parameters == 4 * ((1 << 14) * (768 + 3072 + 1) + 3072)
    assert skip.parameters - tc.parameters == 4 * 768 * 3072
