"""`actstore train --kind crosscoder`: latents shared by two hooks of one store (12 and 5
wide), trained, saved with a normaliser per site, resumed, planned, refused, and at --tp 2
(gloo, real processes) equal to the plain run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from actstore import ActivationStore
from actstore.loader.delivery import Normalizer
from tests.helpers import HOOKS
from tests.trainer.helpers import (
    assert_close_weights,
    assert_same_weights,
    config,
    curves,
    die_at_step,
)
from tests.trainer.training.test_train_sharded import run_ranks
from trainer.dictionary.export import load_crosscoder
from trainer.training.config import TrainConfig
from trainer.training.logs import read_metrics
from trainer.training.train import train


def crosscoder(store: str, out: Path, **kw: Any) -> TrainConfig:
    return config(store, out, **{"hook": HOOKS, "kind": "crosscoder", "k": (3,), **kw})


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_a_crosscoder_learns_both_sites_and_is_saved_with_their_normalisers(
        store: str, tmp_path: Path, arch: str) -> None:
    knobs: dict[str, Any] = {"k": (3,)} if arch == "topk" else {"k": (), "l1": (0.01,)}
    result = train(crosscoder(store, tmp_path, arch=arch, **knobs))
    lines = [r for r in read_metrics(tmp_path) if "dictionaries" in r]
    (name,) = lines[0]["dictionaries"]
    first, last = lines[0]["dictionaries"][name], lines[-1]["dictionaries"][name]
    assert last["fvu"] < first["fvu"]
    if arch == "topk":
        assert last["l0"] == pytest.approx(3, abs=0.5)
    else:  # Lindsey et al.'s penalty is logged as the relu's
        assert last["l1_loss"] > 0
    (d,) = result.dictionaries
    cc, norms, meta = load_crosscoder(d)
    assert (cc.cfg.kind, cc.cfg.sites, cc.cfg.d_model) == ("crosscoder", (12, 5), 17)
    assert meta["source"]["hook"] == list(HOOKS)
    s = ActivationStore.open(store)
    for hook, norm in zip(HOOKS, norms, strict=True):
        assert norm.scale == pytest.approx(Normalizer.of(s, hook, "scale").scale)
    assert not (d / "saelens").exists()  # no peer reads crosscoders
    # the files reconstruct the store's rows as the training metrics said (same normalised
    # space, FVU over both sites side by side)
    x = torch.cat([n.apply(s.read_torch(h, 0, s.num_rows).float())
                   for h, n in zip(HOOKS, norms, strict=True)], 1)
    fvu = float(((x - cc.reconstruct(x)[0]) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu < first["fvu"]


def test_a_resumed_crosscoder_replays_the_uninterrupted_run(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings: dict[str, Any] = {"arch": "batchtopk", "tokens": 320}
    train(crosscoder(store, tmp_path / "whole", **settings))
    with monkeypatch.context() as m:
        die_at_step(m, 13)
        with pytest.raises(KeyboardInterrupt):
            train(crosscoder(store, tmp_path / "cut", **settings))
    train(crosscoder(store, tmp_path / "cut", resume=True, **settings))
    assert curves(tmp_path / "cut") == curves(tmp_path / "whole")
    assert_same_weights(tmp_path / "cut", tmp_path / "whole")


@pytest.mark.parametrize(("change", "message"), [
    ({"hook": HOOKS[:1]}, "at least 2"),
    ({"target_hook": (HOOKS[0],), "hook": HOOKS[1:]}, "at least 2"),
    ({"skip": True}, "no --target-hook or --skip"),
    ({"kind": "sae"}, "--kind crosscoder for latents shared"),
])
def test_crosscoder_settings_are_refused_before_any_work(
        store: str, tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        crosscoder(store, tmp_path, **change)


def test_plan_counts_a_crosscoder_as_an_sae_over_its_sites(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from actstore.shell.main import main
    from trainer.training import memory

    argv = ["train", "--store", store, "--kind", "crosscoder", "--hook", *HOOKS,
            "--arch", "topk", "--latents", "64", "--k", "4", "--tokens", "64",
            "--batch-size", "16", "--out", str(tmp_path / "run"), "--plan"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "a crosscoder over 2 sites: an SAE over their 17 dimensions side by side" in out
    cfg = crosscoder(store, tmp_path, latents=(64,), k=(4,), batch_size=16, tokens=64)
    sae = memory.dictionary_memory(d=17, latents=64, k=4, batch=16)
    assert memory.run_memory(cfg, 17, sites=(12, 5)).total == sae.total
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_crosscoder_at_tp2_equals_the_plain_run(store: str, tmp_path: Path) -> None:
    # relu: Lindsey's penalty, each slice's share summed (TopK's selection over slices is
    # the SAE's, tested in test_train_sharded); an odd latent count: uneven slices
    settings: dict[str, Any] = {"latents": (23,), "tokens": 320, "arch": "relu", "k": (),
                                "l1": (0.01,)}
    train(crosscoder(store, tmp_path / "plain", **settings))
    run_ranks(2, crosscoder(store, tmp_path / "tp2", tp=2, **settings))
    assert_close_weights(tmp_path / "plain", tmp_path / "tp2")


def test_eval_scores_every_site_and_where_the_latents_live(store: str, tmp_path: Path) -> None:
    from actstore.loader import holdout
    from trainer.dictionary.crosscoder import relative_norms
    from trainer.evaluation.config import EvalConfig
    from trainer.evaluation.multihook.crosscoder import ONLY, SHARED
    from trainer.evaluation.multihook.transcoders import evaluate_run
    from trainer.evaluation.report import write_report

    train(crosscoder(store, tmp_path / "run", k=(2, 4), holdout=0.25, tokens=320))
    cfg = EvalConfig(run=str(tmp_path / "run"), out=str(tmp_path / "report"), ica="none")
    ev = evaluate_run(cfg)
    assert (ev.meta["kind"], ev.meta["held_out"]) == ("crosscoder", True)
    # loss recovered is not computed for a crosscoder (its sites are not spliced): said, and
    # no such score
    assert ev.meta["spliced"].startswith("skipped")
    assert not {"loss_recovered", "final_state_recovered", "kl"} & {
        k for s in ev.dictionaries.values() for k in s}
    s = ActivationStore.open(store)
    part = holdout.partition(s, 0.25)
    rows = torch.cat([h.rows for h in holdout.held_out_batches(s, HOOKS[0], part, cfg.rows)])
    xs = [torch.from_numpy(s.read_float32(h, 0, s.num_rows))[rows] for h in HOOKS]
    for name in ("topk-n24-k2", "topk-n24-k4"):
        cc, norms, _ = load_crosscoder(tmp_path / "run" / "dictionaries" / name)
        x_hat = cc.reconstruct(torch.cat([n.apply(x) for x, n in zip(xs, norms,
                                                                     strict=True)], 1))[0]
        scores = ev.dictionaries[name]
        for i, (x, n, part_hat) in enumerate(zip(xs, norms, x_hat.split((12, 5), 1),
                                                 strict=True)):
            want = float(((x - n.invert(part_hat)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
            assert scores[f"fvu_site_{i}"] == pytest.approx(want, rel=1e-4)
        # where the latents live, from the decoder blocks' norms directly
        norms_ab = torch.stack([cc.W_dec[:, :12].norm(dim=1), cc.W_dec[:, 12:].norm(dim=1)], 1)
        share_b = norms_ab[:, 1] / norms_ab.sum(1)
        torch.testing.assert_close(relative_norms(cc.W_dec, (12, 5))[:, 1], share_b)
        detail = ev.meta["crosscoder"][name]
        assert detail["relative_norms"] == pytest.approx(share_b.tolist())
        assert detail["groups"]["only_site_1"] == (share_b >= ONLY).nonzero().flatten().tolist()
        assert detail["groups"]["only_site_0"] == (share_b <= 1 - ONLY).nonzero().flatten(
        ).tolist()
        shared = ((share_b >= SHARED / 2) & (share_b <= 1 - SHARED / 2)).nonzero().flatten()
        assert detail["groups"]["shared"] == shared.tolist()
        assert sum(detail["histograms"][1]) == 24
    out = write_report(ev, s, cfg)
    assert "## Crosscoder sites" in (out / "report.md").read_text()
    pages = json.loads((out / "latents.json").read_text())["dictionaries"]["topk-n24-k2"]
    shown = {i for ids in ev.meta["crosscoder"]["topk-n24-k2"]["shown"].values() for i in ids}
    assert {str(i) for i in shown if ev.tops["topk-n24-k2"].fired[i] > 0} <= set(pages["pages"])
