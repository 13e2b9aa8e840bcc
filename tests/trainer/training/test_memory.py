"""The memory model: `--plan` prints it without training, a run that cannot fit is refused
up front naming what would fit, and its prediction matches a measured step's peak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from actstore.loader.loader import EpochPlan, Loader, LoaderConfig
from actstore.shell.main import main
from tests.helpers import HOOKS, fill_store, new_store
from trainer.training import memory as plan
from trainer.training.config import TrainConfig
from trainer.training.train import train

GIB = 1 << 30


def settings(store: str, out: Path, latents: int) -> list[str]:
    return ["train", "--store", store, "--hook", HOOKS[0], "--arch", "topk", "--latents",
            str(latents), "--k", "4", "--tokens", "64", "--batch-size", "16", "--out", str(out),
            "--no-progress", "--eval-contexts", "0"]


def test_plan_prints_the_parts_and_trains_nothing(store: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*settings(store, tmp_path / "run", 64), "--plan"]) == 0
    out = capsys.readouterr().out
    for part in ("parameters", "gradients", "optimizer", "step", "total", "free on cpu"):
        assert part in out
    assert out.strip().endswith("fits")
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_a_run_that_cannot_fit_is_refused_naming_what_would(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(plan, "available_bytes", lambda _device: 1 * GIB)
    d = 12  # the fixture store's width
    cfg = TrainConfig(store=store, hook=HOOKS[0], arch="topk", latents=(6_000_000,), k=(4,),
                      tokens=64, batch_size=16, out=str(tmp_path / "run"))
    need = [plan.run_memory(cfg, d, tp=t).total for t in (1, 2, 4, 8)]
    assert need[1] > GIB >= need[2]  # tp=4 is the smallest that fits
    with pytest.raises(ValueError, match="latents sharded over tp=4 devices"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before any work
    code = main(settings(store, tmp_path / "run", 6_000_000))
    assert code == 2
    assert "does not fit in memory" in capsys.readouterr().err


def test_the_largest_batch_that_fits_is_named(store: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(store=store, hook=HOOKS[0], arch="relu", latents=(200_000,), l1=(0.1,),
                      tokens=8192, batch_size=4096, out=str(tmp_path / "run"))
    fits = plan.run_memory(cfg, 12, batch=1024).total
    monkeypatch.setattr(plan, "available_bytes", lambda _device: fits)
    assert plan.run_memory(cfg, 12, batch=2048).total > fits
    problem = plan.fit_problem(cfg, 12, 2, 1, torch.device("cuda"))
    assert problem is not None
    assert "--batch-size 1024" in problem


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3"])
def test_the_loader_windows_in_the_plan_are_what_the_loader_allocates(tmp_path: Path,
                                                                      dtype: str) -> None:
    """Against the buffers of a real window: an 8-bit store's row scales are counted."""
    from concurrent.futures import ThreadPoolExecutor

    store = new_store(str(tmp_path / "s"), dtype)  # type: ignore[arg-type]
    fill_store(store)
    cfg = TrainConfig(store=store.url, hook=HOOKS[0], arch="topk", latents=(64,), k=(4,),
                      tokens=64, batch_size=8, shuffle_buffer=32, out=str(tmp_path / "run"))
    loader = Loader(LoaderConfig(hooks=(HOOKS[0],), batch_size=8, shuffle_buffer=32),
                    store=store)
    with ThreadPoolExecutor(1) as pool:
        _, window, futures = loader._read_window(EpochPlan(store, 0, 0, 0, 1), pool, 0)
        for f in futures:
            f.result()
    allocated = sum(t.nbytes for t in window[HOOKS[0]])
    d = store.layout.d_model[HOOKS[0]]
    itemsize = 1 if dtype == "float8_e4m3" else 2
    assert plan.loader_bytes(cfg, d, itemsize, scale_bytes=plan.scale_bytes_of(
        store.spec.dtype)) == 2 * allocated  # the window served and the next one


@pytest.mark.parametrize(("kernel", "batch"), [("sparse", 1024), ("dense", 512)])
def test_prediction_within_20_percent_of_a_measured_step(kernel: str, batch: int) -> None:
    """One training step (AuxK on) in a fresh process: its resident-set peak, less the
    process's size before the dictionary, against the model."""
    latents, d = 65536, 256
    argv = [sys.executable, "-m", "benchmarks.large_dictionary", "--child-latents",
            str(latents), "--child-kernel", kernel, "--batch", str(batch), "--d", str(d),
            "--k", "32", "--steps", "1", "--warmup", "1", "--device", "cpu"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parents[3])
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    predicted = plan.dictionary_memory(d=d, latents=latents, k=32, batch=batch,
                                       kernel=kernel)  # type: ignore[arg-type]
    assert 0.8 <= predicted.total / measured["peak_bytes"] <= 1.2, (predicted, measured)


def test_a_clt_prediction_within_20_percent_of_a_measured_step() -> None:
    """A cross-layer transcoder's step (4 layers, 10 decoders, AuxK on) in a fresh process
    against the model, as above."""
    latents, d, layers, batch = 8192, 128, 4, 1024
    argv = [sys.executable, "-m", "benchmarks.large_dictionary", "--child-latents",
            str(latents), "--child-kernel", "sparse", "--batch", str(batch), "--d", str(d),
            "--k", "32", "--steps", "1", "--warmup", "1", "--device", "cpu", "--clt",
            str(layers)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parents[3])
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    predicted = plan.dictionary_memory(d=d, latents=latents, k=32, batch=batch, d_out=d,
                                       layers=layers).total
    assert 0.8 < predicted / measured["peak_bytes"] < 1.2
