"""`actstore eval` on a run of transcoders (trainer.evaluation.multihook.transcoders): a real tiny
GPT-2's MLP, its input and output stored in one pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from actstore import ActivationStore
from actstore.loader import holdout
from actstore.loader.delivery import Normalizer
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.multihook.transcoders import evaluate_run, projection_of
from trainer.evaluation.report import write_report
from trainer.evaluation.run import load_run, open_slice
from trainer.evaluation.splicer import Splicer

MLP = "transformer.h.1.mlp"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A store of block 1's MLP input and output, and a run of two transcoders on it."""
    from actstore.generate.config import GenerateConfig
    from actstore.generate.pipeline import generate
    from tests.gen_fixtures import save_tiny
    from trainer.training.config import TrainConfig
    from trainer.training.train import train

    root = tmp_path_factory.mktemp("transcoders")
    model = save_tiny("gpt2", root / "model")  # d_model 32, MLP hidden 128
    url = generate(GenerateConfig(model=model, hooks=(f"{MLP}:input", MLP),
                                  dataset="builtin:pydoc", out=str(root / "stores"),
                                  context_length=32, max_tokens=8192, executor="local",
                                  progress=False)).url
    train(TrainConfig(store=url, hook=f"{MLP}:input", kind="transcoder", target_hook=MLP,
                      skip=True, arch="topk", latents=(128,), k=(4, 16), tokens=8192,
                      batch_size=256, out=str(root / "run"), holdout=0.25, eval_contexts=0,
                      progress=False, plots=False))
    return root, url, model


def test_transcoders_and_the_linear_map_are_scored_on_held_out_rows(
        run: tuple[Path, str, str]) -> None:
    root, _, _ = run
    cfg = EvalConfig(run=str(root / "run"), out=str(root / "report"), splice_contexts=8,
                     ks=(1, 4, 128))
    ev = evaluate_run(cfg)
    members = load_run(cfg.run)
    store, part, held_out = open_slice(cfg, members[0])
    assert held_out
    # independent recomputation from the raw rows of the held-out slice
    held = list(holdout.held_out_batches(store, f"{MLP}:input", part, cfg.rows))
    x = torch.cat([h.x for h in held])
    rows = torch.cat([h.rows for h in held])
    y = torch.from_numpy(store.read_float32(MLP, 0, store.num_rows))[rows]
    variance = float((y.double() - y.double().mean(0)).pow(2).sum())
    for m in members:
        y_hat = m.out_norm.invert(m.sae.reconstruct(m.norm.apply(x))[0])
        fvu = float((y - y_hat).double().pow(2).sum()) / variance
        assert ev.dictionaries[m.name]["fvu"] == pytest.approx(fvu, rel=1e-4)
        l0 = float((m.sae.encode(m.norm.apply(x)) > 0).sum(1).double().mean())
        assert ev.dictionaries[m.name]["l0"] == pytest.approx(l0, rel=1e-6)
        assert 0.9 * (m.sae.cfg.k or 0) < l0 <= (m.sae.cfg.k or 0)
    # the linear map: least squares on every training row, solved another way
    train_rows = store.layout.shard_rows_range(part.train[-1])[1]
    xt = torch.from_numpy(store.read_float32(f"{MLP}:input", 0, train_rows)).double()
    yt = torch.from_numpy(store.read_float32(MLP, 0, train_rows)).double()
    x1 = torch.cat([xt, torch.ones(len(xt), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(x1, yt).solution
    lin = x.double() @ sol[:-1] + sol[-1]
    (linear,) = [r for r in ev.frontier if r["method"] == "linear"]
    assert linear["fvu"] == pytest.approx(float((y - lin).pow(2).sum()) / variance, rel=1e-3)
    # the wider transcoder predicts better than the narrow one; both spliced in the model
    assert ev.dictionaries["topk-n128-k16"]["fvu"] < ev.dictionaries["topk-n128-k4"]["fvu"]
    spliced = {(r["method"], r["k"]) for r in ev.spliced}
    assert spliced == {("topk-n128-k4", 4), ("topk-n128-k16", 16), ("linear", 32)}
    # the MLP's own neurons through its own projection: every neuron kept gives the MLP's
    # output back; fewer lose more
    neurons = {r["k"]: r["fvu"] for r in ev.frontier if r["method"] == "neurons"}
    assert set(neurons) == {1, 4, 16, 128}
    assert neurons[128] == pytest.approx(0.0, abs=1e-9)
    assert neurons[1] > neurons[4] > neurons[16] > neurons[128]
    assert ev.meta["neurons"] == "8 held-out contexts run through the model"
    out = write_report(ev, store, cfg)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["meta"]["target_hook"] == MLP


def test_the_neurons_are_the_input_of_the_mlps_output_projection(
        run: tuple[Path, str, str]) -> None:
    _, _, model_path = run
    model = transformers.GPT2LMHeadModel.from_pretrained(model_path)
    assert projection_of(model, MLP) == f"{MLP}.c_proj"
    assert projection_of(model, f"{MLP}.c_proj") == f"{MLP}.c_proj"
    with pytest.raises(ValueError, match="not an MLP's output"):
        projection_of(model, "transformer.h.1.ln_2")


def test_replacing_the_mlp_output_by_the_mlp_of_its_input_recovers_everything(
        run: tuple[Path, str, str]) -> None:
    """The splicer's transcoder path: the target hook replaced by a function of the input
    hook, read in the same pass. The MLP itself as that function gives the clean model back;
    zero gives the zero-ablation's loss."""
    _, url, model_path = run
    store = ActivationStore.open(url)
    model = transformers.GPT2LMHeadModel.from_pretrained(model_path).eval()
    mlp = dict(model.named_modules())[MLP]
    raw = Normalizer(None, 1.0)
    splicer = Splicer(store, MLP, raw, 4, torch.device("cpu"), source=(f"{MLP}:input", raw))
    same, zero = splicer.evaluate_replacements([mlp, lambda h: torch.zeros(*h.shape[:-1], 32)])
    assert same["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    assert zero["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
