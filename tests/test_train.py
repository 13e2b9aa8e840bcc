"""`actstore train`: flags and config files, exact resume, exports, bad input."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from actstore import StoreBusyError, StoreFullError
from actstore.loader.loader import Normalizer
from actstore.shell.main import main
from actstore.store.location import Location
from actstore.store.lock import JobLock
from tests.conftest import TmpFs
from tests.helpers import HOOKS, fill_store, new_store
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import export_saelens, load_dictionary, save_dictionary
from trainer.training import ensemble
from trainer.training.config import TrainConfig
from trainer.training.logs import read_metrics
from trainer.training.train import train


def config(store: str, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "store": store, "hook": HOOKS[0], "arch": "topk", "latents": (24,), "k": (2, 3),
        "tokens": 640, "batch_size": 16, "out": str(out), "log_every": 5,
        "checkpoint_every": 10, "eval_contexts": 0, "progress": False, "init_rows": 64,
        "warmup_steps": 4, "dead_after_tokens": 64, "lr": 1e-2, "plots": False}
    return TrainConfig(**{**base, **kw})


def weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {d.name: load_file(d / "model.safetensors")
            for d in sorted((out / "dictionaries").iterdir())}


def curves(out: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(out)]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), (name, key)


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


def die_at_step(m: pytest.MonkeyPatch, n: int) -> None:
    """The n-th training step raises KeyboardInterrupt, as a run killed there would stop."""
    real_step = ensemble.Ensemble.step
    calls = {"n": 0}

    def dying_step(self: ensemble.Ensemble, x: torch.Tensor, autocast: bool = False) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, x, autocast)
    m.setattr(ensemble.Ensemble, "step", dying_step)


def test_resume_replays_the_uninterrupted_run(store: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at step 27 (last checkpoint at 20): the resumed run logs the same curve, step
    for step, and ends with the same parameters, bit for bit."""
    whole = tmp_path / "whole"
    train(config(store, whole, arch="batchtopk"))
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        die_at_step(m, 28)
        with pytest.raises(KeyboardInterrupt):
            train(config(store, cut, arch="batchtopk"))
    assert max(r["step"] for r in read_metrics(cut)) == 25  # logged past the checkpoint
    train(config(store, cut, arch="batchtopk", resume=True))
    assert curves(cut) == curves(whole)
    assert_same_weights(cut, whole)


def test_config_file_equals_flags(store: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["train", "--store", store, "--hook", HOOKS[0], "--arch", "relu", "--latents",
             "16", "--l1", "0.01", "0.1", "--tokens", "320", "--batch-size", "16",
             "--log-every", "5", "--checkpoint-every", "10", "--eval-contexts", "0",
             "--no-progress", "--no-plots", "--normalize", "center_scale"]
    assert main([*flags, "--out", str(tmp_path / "a")]) == 0
    assert "trained 2 dictionaries for 20 steps" in capsys.readouterr().out
    (tmp_path / "run.toml").write_text(
        f'store = "{store}"\nhook = "{HOOKS[0]}"\narch = "relu"\nlatents = [16]\n'
        'l1 = [0.01, 0.1]\ntokens = 320\nbatch_size = 999\nlog_every = 5\n'
        'checkpoint_every = 10\neval_contexts = 0\nnormalize = "center_scale"\n')
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--batch-size", "16",
                 "--out", str(tmp_path / "b"), "--no-progress", "--no-plots"]) == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "topk", "--latents", "8", "--k", "9"], "--k 9 must be in"),
    (["--arch", "topk", "--latents", "8"], "needs --k"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--k", "2"], "--k does not apply"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--checkpoint-every", "7"],
     "multiple of --log-every"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--hook", "nope"], "not in store"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--batch-size", "4096", "--tokens",
      "8192"], "fewer than one batch"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--resume"], "no checkpoint"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--eval-contexts", "2"],
     "loss recovered needs the store's model (tiny-random), which failed to load"),
])
def test_bad_flags_fail_before_any_work(store: str, tmp_path: Path, args: list[str],
                                        message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--store": store, "--hook": HOOKS[0], "--tokens": "64", "--batch-size": "16",
            "--out": str(tmp_path / "out"), "--log-every": "2", "--eval-contexts": "0"}
    for flag in args:
        base.pop(flag, None)
    argv = ["train", *[x for kv in base.items() for x in kv], *args, "--no-progress"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_device_cuda_without_a_gpu_is_refused(store: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        train(config(store, tmp_path, device="cuda"))


def test_missing_store_and_unknown_setting(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--store", str(tmp_path / "none"), "--hook", "h", "--arch", "relu",
                 "--latents", "8", "--l1", "1", "--tokens", "8", "--batch-size", "8",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no actstore store at" in capsys.readouterr().err
    (tmp_path / "c.json").write_text(json.dumps({"stor": "x"}))
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    assert "unknown train settings ['stor']" in capsys.readouterr().err


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
        m.setattr("trainer.training.train.export_saelens", full)
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


def test_one_run_per_folder(store: str, tmp_path: Path) -> None:
    """A live run's folder is refused to a second run; a folder of another (finished or
    foreign) run is refused unless --overwrite, which replaces that run's files only."""
    out = tmp_path / "run"
    live = JobLock(Location.from_url(str(out)), "live-run")
    live.acquire()
    with pytest.raises(StoreBusyError, match=r"run folder .* in use by job 'live-run'"):
        train(config(store, out, tokens=160))
    live.release()
    assert not out.joinpath("metrics.jsonl").exists()  # the refused run wrote nothing
    out.joinpath("metrics.jsonl").write_text('{"step": 5}\n')
    out.joinpath("notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files of another run \(metrics.jsonl, "
                                         r"notes.txt\): pass --overwrite"):
        train(config(store, out, tokens=160))
    assert out.joinpath("metrics.jsonl").read_text() == '{"step": 5}\n'  # not truncated
    train(config(store, out, tokens=160, overwrite=True))
    assert [r["step"] for r in read_metrics(out)] == [5, 10]
    assert out.joinpath("notes.txt").read_text() == "mine"  # not ours: left alone
    assert not out.joinpath("lock").exists() or not any(out.joinpath("lock").iterdir())
    out.joinpath("a-file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(config(store, out / "a-file", tokens=160))


def raw_codes(arch: str, w: dict[str, torch.Tensor], cfg: dict[str, Any],
              x: torch.Tensor) -> torch.Tensor:
    """SAELens' inference maths, written out: what its loaders compute from the export."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "topk":
        top = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return pre * (pre > w["threshold"])


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_saelens_export_acts_on_raw_activations(arch: str, tmp_path: Path) -> None:
    d, n = 6, 10
    cfg = DictionaryConfig(arch=arch, d_model=d, latents=n, k=3, l1=0.1, l0=0.1)
    sae = SparseDictionary(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_()
        sae.threshold.fill_(0.05)
    norm = Normalizer(torch.randn(d), 0.37)
    source = {"model": "m", "hook": "h.1", "context_length": 8, "dataset": "ds",
              "bos_policy": "keep"}
    save_dictionary(tmp_path, sae, norm, source)
    export_saelens(tmp_path / "saelens", sae, norm, source)
    w = load_file(tmp_path / "saelens" / "sae_weights.safetensors")
    scfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    expected_keys = {"W_enc", "W_dec", "b_enc", "b_dec"} | (
        {"threshold"} if arch in ("jumprelu", "batchtopk") else set())
    assert set(w) == expected_keys
    assert w["W_enc"].shape == (d, n)
    assert w["W_dec"].shape == (n, d)
    assert (scfg["d_in"], scfg["d_sae"], scfg["metadata"]["hook_name"]) == (d, n, "h.1")
    assert scfg["metadata"]["sae_lens_version"].startswith("6.")  # SAELens 6 reads these
    assert scfg["normalize_activations"] == "none"
    x = torch.randn(32, d) * 4 + 1
    with torch.no_grad():
        z = sae.encode(norm.apply(x))
        want = norm.invert(sae.decode(z))
    z_raw = raw_codes(scfg["architecture"], w, scfg, x)
    torch.testing.assert_close(z_raw, z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_raw @ w["W_dec"] + w["b_dec"], want, rtol=1e-4, atol=1e-4)
    again, norm_again, _ = load_dictionary(tmp_path)  # our own format round-trips
    for (k, a), b in zip(sae.state_dict().items(), again.state_dict().values(), strict=True):
        if k != "tokens_since_fired":
            assert torch.equal(a, b), k
    assert norm_again.scale == norm.scale
    assert torch.equal(norm_again.mean, norm.mean)


def test_config_dataclass_round_trips(store: str, tmp_path: Path) -> None:
    cfg = config(store, tmp_path)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert [m.k for m in cfg.dictionaries(12)] == [2, 3]
    assert dataclasses.replace(cfg, latents=(8, 16)).dictionaries(12)[3].latents == 16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_with_bf16_autocast(store: str, tmp_path: Path) -> None:
    result = train(config(store, tmp_path, device="cuda", arch="jumprelu", k=(), l0=(0.01,)))
    lines = [r["dictionaries"] for r in read_metrics(tmp_path) if "dictionaries" in r]
    assert lines[-1]["jumprelu-n24-l0-0.01"]["fvu"] < lines[0]["jumprelu-n24-l0-0.01"]["fvu"]
    w = weights(tmp_path)["jumprelu-n24-l0-0.01"]
    assert all(t.dtype == torch.float32 for t in w.values())  # autocast left params in fp32
    assert result.steps == 40


def test_streams_from_every_backend_with_the_same_result(store: str, store_url: str,
                                                         tmp_path: Path) -> None:
    """The same data on memory://, a folder or S3 trains to the same weights, bit for bit."""
    fill_store(new_store(store_url))  # same seed as the `store` fixture: the same rows
    train(config(store, tmp_path / "ref", tokens=160))
    train(config(store_url, tmp_path / "other", tokens=160))
    assert_same_weights(tmp_path / "ref", tmp_path / "other")
