"""`actstore train --kind clt`: a cross-layer transcoder over the four MLPs of a real tiny
GPT-2 (inputs and outputs stored in one pass), trained, saved, resumed, refused, and at
--tp 2 (gloo, real processes) equal to the plain run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from actstore import ActivationStore
from tests.trainer.helpers import assert_close_weights, assert_same_weights, curves, die_at_step
from tests.trainer.training.test_train_sharded import run_ranks
from trainer.dictionary.clt_export import load_clt
from trainer.training.config import TrainConfig
from trainer.training.logs import read_metrics
from trainer.training.train import train

LAYERS = 4
INPUTS = tuple(f"transformer.h.{i}.mlp:input" for i in range(LAYERS))
OUTPUTS = tuple(f"transformer.h.{i}.mlp" for i in range(LAYERS))


@pytest.fixture(scope="module")
def clt_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every MLP's input and output of a four-block GPT-2 (d_model 32), 4,096 tokens."""
    from actstore.generate.config import GenerateConfig
    from actstore.generate.pipeline import generate
    from tests.gen_fixtures import save_tiny

    root = tmp_path_factory.mktemp("clt")
    model = save_tiny("gpt2-4", root / "model")
    return generate(GenerateConfig(model=model, hooks=INPUTS + OUTPUTS,
                                   dataset="builtin:pydoc", out=str(root / "stores"),
                                   context_length=32, max_tokens=4096, executor="local",
                                   progress=False)).url


def clt(store: str, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "store": store, "hook": INPUTS, "target_hook": OUTPUTS, "kind": "clt", "arch": "topk",
        "latents": (48,), "k": (3,), "tokens": 2560, "batch_size": 64, "out": str(out),
        "log_every": 5, "checkpoint_every": 10, "eval_contexts": 0, "progress": False,
        "init_rows": 256, "warmup_steps": 4, "dead_after_tokens": 640, "lr": 1e-2,
        "plots": False, "holdout": 0.25}
    return TrainConfig(**{**base, **kw})


def held_out_fvu(store_url: str, path: Path) -> list[float]:
    """Per target, the FVU of the saved CLT on the rows of the last quarter of the store,
    recomputed from the raw rows through the files' own normalisers."""
    model, norms, target_norms, _ = load_clt(path)
    store = ActivationStore.open(store_url)
    lo = store.num_rows * 3 // 4
    x = torch.stack([n.apply(store.read_torch(h, lo, store.num_rows).float())
                     for h, n in zip(INPUTS, norms, strict=True)], 1)
    y = torch.stack([store.read_torch(h, lo, store.num_rows).float() for h in OUTPUTS], 1)
    y_hat_n, _ = model.reconstruct(x)
    y_hat = torch.stack([n.invert(y_hat_n[:, j]) for j, n in enumerate(target_norms)], 1)
    err = ((y - y_hat) ** 2).sum((0, 2))
    return (err / ((y - y.mean(0)) ** 2).sum((0, 2))).tolist()


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_a_clt_learns_every_layer_and_is_saved_whole(clt_store: str, tmp_path: Path,
                                                     arch: str) -> None:
    knobs: dict[str, Any] = {"k": (3,)} if arch == "topk" else {"k": (), "l1": (0.003,)}
    result = train(clt(clt_store, tmp_path, arch=arch, **knobs))
    lines = [r for r in read_metrics(tmp_path) if "dictionaries" in r]
    (name,) = lines[0]["dictionaries"]
    first, last = lines[0]["dictionaries"][name], lines[-1]["dictionaries"][name]
    assert last["fvu"] < first["fvu"]
    if arch == "topk":  # k per layer, every layer: an L0 of k * L per token
        assert last["l0"] == pytest.approx(3 * LAYERS, abs=0.5)
    (d,) = result.dictionaries
    model, norms, target_norms, meta = load_clt(d)
    assert (model.cfg.kind, model.cfg.layers, model.cfg.d_model, len(norms),
            len(target_norms)) == ("clt", LAYERS, 32, LAYERS, LAYERS)
    assert meta["source"]["hook"] == list(INPUTS)
    assert meta["source"]["target_hook"] == list(OUTPUTS)
    # every later layer's target is predicted, from held-out rows, better than by its mean
    fvus = held_out_fvu(clt_store, d)
    assert all(f < 0.9 for f in fvus), fvus
    assert (d / "circuit_tracer").is_dir() == (arch == "relu")  # circuit-tracer has no TopK


def test_a_resumed_clt_replays_the_uninterrupted_run(
        clt_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"arch": "batchtopk", "tokens": 1280}
    train(clt(clt_store, tmp_path / "whole", **settings))
    with monkeypatch.context() as m:
        die_at_step(m, 13)
        with pytest.raises(KeyboardInterrupt):
            train(clt(clt_store, tmp_path / "cut", **settings))
    train(clt(clt_store, tmp_path / "cut", resume=True, **settings))
    assert curves(tmp_path / "cut") == curves(tmp_path / "whole")
    assert_same_weights(tmp_path / "cut", tmp_path / "whole")


@pytest.mark.slow
def test_a_clt_at_tp2_equals_the_plain_run(clt_store: str, tmp_path: Path) -> None:
    # odd: an uneven split; a short dead window, so AuxK acts on every layer's dead latents
    settings: dict[str, Any] = {"tokens": 640, "latents": (41,), "dead_after_tokens": 64}
    train(clt(clt_store, tmp_path / "plain", **settings))
    assert any(r["dictionaries"][n]["aux_loss"] > 0 for r in read_metrics(tmp_path / "plain")
               if "dictionaries" in r for n in r["dictionaries"])
    run_ranks(2, clt(clt_store, tmp_path / "tp2", tp=2, **settings))
    assert_close_weights(tmp_path / "plain", tmp_path / "tp2")
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "tp2")
    for ra, rb in zip(a, b, strict=True):
        for name, metrics in ra.get("dictionaries", {}).items():
            for key in ("fvu", "l0", "dead"):
                assert rb["dictionaries"][name][key] == pytest.approx(metrics[key], rel=1e-4,
                                                                      abs=1e-6), (name, key)


@pytest.mark.parametrize(("change", "message"), [
    ({"target_hook": OUTPUTS[:3]}, "a --hook per layer"),
    ({"hook": INPUTS[:1], "target_hook": OUTPUTS[:1]}, "a --hook per layer"),
    ({"skip": True}, "--skip applies to --kind transcoder"),
    ({"kind": "sae", "target_hook": ()}, "an SAE reads one --hook"),
    ({"target_hook": (*OUTPUTS[:3], INPUTS[0])}, "each hook may appear once"),
])
def test_clt_settings_are_refused_before_any_work(clt_store: str, tmp_path: Path,
                                                  change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clt(clt_store, tmp_path, **change)
    assert not tmp_path.joinpath("checkpoint").exists()
