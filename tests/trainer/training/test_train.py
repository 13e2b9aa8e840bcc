"""The training loop (trainer.training.train): every artifact of a sweep, exact resume,
a full disk, held-out shards never read, every backend, CUDA."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path
from typing import Any

import pytest
import torch

from actstore import StoreFullError
from tests.conftest import TmpFs
from tests.helpers import HOOKS, fill_store, new_store, straddling_store
from tests.trainer.helpers import assert_same_weights, config, curves, die_at_step, weights
from trainer.dictionary.export import load_dictionary
from trainer.training.logs import read_metrics
from trainer.training.train import train


def test_trains_a_sweep_and_writes_every_artifact(store: str, tmp_path: Path) -> None:
    result = train(config(store, tmp_path, plots=True))
    assert result.steps == 40
    assert result.tokens == 640
    assert [d.name for d in result.dictionaries] == ["topk-n24-k2", "topk-n24-k3"]
    lines = [r for r in read_metrics(tmp_path) if "dictionaries" in r]
    assert [r["step"] for r in lines] == list(range(5, 41, 5))
    first, last = lines[0]["dictionaries"], lines[-1]["dictionaries"]
    for name in first:
        assert last[name]["fvu"] < first[name]["fvu"]  # it learns
        assert last[name]["l0"] == pytest.approx(int(name[-1]))  # exactly k per token
    for d in result.dictionaries:
        sae, _, cfg = load_dictionary(d)
        assert cfg["source"]["hook"] == HOOKS[0]
        norms = sae.W_dec.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))  # the decoder constraint
        assert sorted(p.name for p in d.iterdir()) == [
            "cfg.json", "latent_density.pt", "model.safetensors", "saelens", "sparsify"]
    assert (tmp_path / ".finished").exists()
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "latent_density.png").stat().st_size > 1000


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_resume_replays_the_uninterrupted_run(store: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    """Killed at step 27 (last checkpoint at 20): the resumed run logs the same curve, step
    for step, and ends with the same parameters, bit for bit."""
    whole = tmp_path / "whole"
    train(config(store, whole, arch=arch))
    if arch == "matryoshka":  # the nested prefixes' loss is logged beside the others
        assert all(m["prefix_loss"] > 0 for r in read_metrics(whole) if "dictionaries" in r
                   for m in r["dictionaries"].values())
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        die_at_step(m, 28)
        with pytest.raises(KeyboardInterrupt):
            train(config(store, cut, arch=arch))
    assert max(r["step"] for r in read_metrics(cut)) == 25  # logged past the checkpoint
    train(config(store, cut, arch=arch, resume=True))
    assert curves(cut) == curves(whole)
    assert_same_weights(cut, whole)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_device_cuda_without_a_gpu_is_refused(store: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        train(config(store, tmp_path, device="cuda"))


def test_resume_refuses_other_settings_and_an_existing_run(store: str, tmp_path: Path) -> None:
    train(config(store, tmp_path, tokens=160))
    with pytest.raises(ValueError, match="holds a checkpoint: pass --resume"):
        train(config(store, tmp_path, tokens=160))
    with pytest.raises(ValueError, match=r"settings differ.*'lr'"):
        train(config(store, tmp_path, tokens=160, lr=1e-3, resume=True))
    with pytest.raises(ValueError, match=r"dictionaries differ \(#0 d_model: saved 12, now 5;"):
        train(config(store, tmp_path, tokens=160, hook=HOOKS[1], resume=True))
    with pytest.raises(ValueError, match=r"holds 2 dictionaries \(topk n=24 k=2, topk n=24 "
                                         r"k=3\), this run asks for 1 \(topk n=24 k=3\)"):
        train(config(store, tmp_path, tokens=160, k=(3,), resume=True))
    with pytest.raises(ValueError, match=r"is finished \(10 of 10 steps\)"):
        train(config(store, tmp_path, tokens=160, resume=True))


def test_a_full_disk_stops_training_in_one_line_and_leaves_no_partial_checkpoint(
        store: str, tmpfs: TmpFs) -> None:
    out = tmpfs.path / "run"
    big = config(store, out, latents=(4096,), k=(4,), tokens=160)  # a checkpoint of ~1.2 MB
    with pytest.raises(StoreFullError, match=r"--out .*/run: no space left on the device "
                                             r".*nothing was checkpointed yet: free space and "
                                             r"rerun with --overwrite"):
        train(big)
    assert not [p for p in out.iterdir() if "checkpoint" in p.name]  # the half-written one
    tmpfs.resize("32m")
    assert train(dataclasses.replace(big, overwrite=True)).steps == 10


def test_a_full_disk_while_the_dictionaries_are_written_resumes_to_write_them(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "cfg.json")

    with monkeypatch.context() as m:
        m.setattr("trainer.training.run_dir.export_saelens", full)
        with pytest.raises(StoreFullError, match=r"no space left on the device \(cfg.json\); its"
                                                 r" last checkpoint .* is intact: free space and "
                                                 r"rerun with --resume"):
            train(config(store, tmp_path / "a", tokens=160))
    assert train(config(store, tmp_path / "a", tokens=160, resume=True)).steps == 10
    train(config(store, tmp_path / "b", tokens=160))
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "dictionaries" / "topk-n24-k3" / "saelens" / "cfg.json").exists()
    with pytest.raises(ValueError, match=r"is finished \(10 of 10 steps\)"):
        train(config(store, tmp_path / "a", tokens=160, resume=True))


def test_resumed_run_reports_its_own_tokens(store: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        die_at_step(m, 13)
        with pytest.raises(KeyboardInterrupt):
            train(config(store, tmp_path, tokens=320))
    result = train(config(store, tmp_path, tokens=320, resume=True))  # from step 10
    assert (result.steps, result.tokens, result.tokens_this_run) == (20, 320, 160)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_with_bf16_autocast(store: str, tmp_path: Path) -> None:
    result = train(config(store, tmp_path, device="cuda", arch="jumprelu", k=(), l0=(0.01,)))
    lines = [r["dictionaries"] for r in read_metrics(tmp_path) if "dictionaries" in r]
    assert lines[-1]["jumprelu-n24-l0-0.01"]["fvu"] < lines[0]["jumprelu-n24-l0-0.01"]["fvu"]
    w = weights(tmp_path)["jumprelu-n24-l0-0.01"]
    assert all(t.dtype == torch.float32 for t in w.values())  # autocast left params in fp32
    assert result.steps == 40


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("settings", [
    {"arch": "matryoshka", "k": (3,)},
    {"kind": "crosscoder", "hook": HOOKS, "k": (3,)},
    {"kind": "transcoder", "target_hook": HOOKS[1], "k": (3,)},
], ids=["matryoshka", "crosscoder", "transcoder"])
def test_the_newer_dictionaries_train_on_cuda(store: str, tmp_path: Path,
                                               settings: dict[str, Any]) -> None:
    """On the GPU as on the CPU: the same run ends at a close FVU (CUDA runs under bf16
    autocast, and its sums run in another order), having lowered it."""
    on = {d: train(config(store, tmp_path / d, device=d, **settings)) for d in ("cpu", "cuda")}
    assert on["cuda"].steps == on["cpu"].steps == 40
    fvu = {d: [next(iter(r["dictionaries"].values()))["fvu"] for r in read_metrics(tmp_path / d)
               if "dictionaries" in r] for d in on}
    assert fvu["cuda"][-1] < fvu["cuda"][0]
    assert fvu["cuda"][-1] == pytest.approx(fvu["cpu"][-1], rel=0.1, abs=0.02)


@pytest.mark.parametrize("store_url", ["memory", "local", "s3", "gs"], indirect=True)
def test_streams_from_every_backend_with_the_same_result(store: str, store_url: str,
                                                         tmp_path: Path) -> None:
    """The same data on memory://, a folder, S3 or GCS trains to the same weights, bit for
    bit (chunks read by range: 4 per shard)."""
    fill_store(new_store(store_url))  # same seed as the `store` fixture: the same rows
    train(config(store, tmp_path / "ref", tokens=160))
    train(config(store_url, tmp_path / "other", tokens=160))
    assert_same_weights(tmp_path / "ref", tmp_path / "other")


def test_training_never_reads_the_held_out_shards(tmp_path: Path) -> None:
    """Two stores equal in their training shards and different in the held-out ones train
    the same dictionaries, bit for bit."""
    from tests.trainer.helpers import config, weights
    from trainer.training.train import train

    runs = []
    for name, held_seed in (("a", 0), ("b", 1)):
        store = straddling_store(str(tmp_path / name))
        fill_store(store, seed=0, shards=[0, 1])
        fill_store(store, seed=held_seed, shards=[2, 3])
        out = tmp_path / f"run-{name}"
        train(config(store.url, out, hook=HOOKS[0], holdout=0.5, tokens=160, batch_size=8,
                     init_rows=16, normalize="center_scale", log_every=5, checkpoint_every=10))
        runs.append(weights(out))
    a, b = runs
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def test_trains_on_an_8bit_store_as_on_its_exact_rows(tmp_path: Path) -> None:
    """Training reads an 8-bit store transparently: the curves follow those of the same rows
    stored in float32, within the store's rounding."""
    exact = new_store(str(tmp_path / "f32"), "float32")
    fill_store(exact)
    small = new_store(str(tmp_path / "f8"), "float8_e4m3")
    fill_store(small)
    kw = {"tokens": 160, "checkpoint_every": 1000, "k": (2,)}
    a = curves_of(train(config(exact.url, tmp_path / "a", **kw)).steps, tmp_path / "a")
    b = curves_of(train(config(small.url, tmp_path / "b", **kw)).steps, tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert b[name] == pytest.approx(a[name], rel=0.05)


def curves_of(steps: int, out: Path) -> dict[str, float]:
    """The last logged FVU of each dictionary of a run of `steps` steps."""
    last = [r for r in read_metrics(out) if r.get("step") == steps][-1]["dictionaries"]
    return {name: float(d["fvu"]) for name, d in last.items()}
