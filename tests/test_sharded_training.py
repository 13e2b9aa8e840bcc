"""`actstore train --tp`: the training loop with latents sharded over gloo ranks in real
processes equals the plain run, and its checkpoints resume at another tp."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import HOOKS, free_port
from tests.test_ddp import env
from tests.test_train import config, die_at_step, read_metrics, weights
from trainer.training.config import TrainConfig
from trainer.training.train import train

pytestmark = pytest.mark.slow


def _rank(rank: int, world: int, port: int, settings: dict[str, Any], die_at: int) -> None:
    """One rank of a run, as torchrun would start it; `die_at` > 0: interrupted there."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    with pytest.MonkeyPatch.context() as m:
        if die_at:
            die_at_step(m, die_at)
        # every rank stops at the same step, as a killed job would
        with contextlib.suppress(KeyboardInterrupt):
            train(TrainConfig.from_dict(settings))


def run_ranks(world: int, cfg: TrainConfig, die_at: int = 0) -> None:
    mp.start_processes(_rank, args=(world, free_port(), cfg.to_dict(), die_at), nprocs=world,
                       start_method="spawn")


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for key in wa[name]:
            torch.testing.assert_close(wb[name][key], wa[name][key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name, k=key: f"{n} {k}: {m}")


def settings(store: str, out: Path, **kw: Any) -> TrainConfig:
    """20 steps, checkpoints every 10; topk (sparse step, AuxK) and relu (dense step)."""
    return config(store, out, tokens=320, **kw)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_tp2_training_equals_the_plain_run(store: str, tmp_path: Path, arch: str) -> None:
    knobs: dict[str, Any] = {"k": (2, 3)} if arch == "topk" else {"k": (), "l1": (0.01, 0.1)}
    plain = settings(store, tmp_path / "plain", arch=arch, **knobs)
    train(plain)
    sharded = settings(store, tmp_path / "tp2", arch=arch, tp=2, **knobs)
    run_ranks(2, sharded)
    assert_close_weights(tmp_path / "plain", tmp_path / "tp2")
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "tp2")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for name, metrics in ra.get("dictionaries", {}).items():
            for key in ("fvu", "l0", "dead", "silent"):
                assert rb["dictionaries"][name][key] == pytest.approx(metrics[key], rel=1e-4,
                                                                      abs=1e-6), (name, key)
    density = "dictionaries/{}/latent_density.pt"
    for name in weights(tmp_path / "plain"):
        torch.testing.assert_close(torch.load(tmp_path / "tp2" / density.format(name)),
                                   torch.load(tmp_path / "plain" / density.format(name)))


def test_a_tp2_checkpoint_resumes_at_tp1_and_tp4(store: str, tmp_path: Path) -> None:
    train(settings(store, tmp_path / "plain"))
    run_ranks(2, settings(store, tmp_path / "a", tp=2), die_at=13)  # checkpoint at step 10
    assert not (tmp_path / "a" / "dictionaries").exists()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    train(settings(store, tmp_path / "a", resume=True))  # tp=1, one process
    run_ranks(4, settings(store, tmp_path / "b", tp=4, resume=True))
    for out in ("a", "b"):
        assert_close_weights(tmp_path / "plain", tmp_path / out)
        assert [r["step"] for r in read_metrics(tmp_path / out)] == [5, 10, 15, 20]


def test_tp_that_does_not_divide_the_ranks_is_refused(store: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--tp 2 must divide the number of ranks \(1\)"):
        train(settings(store, tmp_path / "x", tp=2))
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_torchrun_and_ray_train_with_tp(store: str, tmp_path: Path) -> None:
    """The command lines a user runs: torchrun and Ray Train with --tp 2; the gathered files
    are plain dictionaries (same names, shapes and SAELens export as an unsharded run)."""
    bin_dir = Path(sys.executable).parent
    flags = ["--store", store, "--hook", HOOKS[0], "--arch", "batchtopk", "--latents", "24",
             "--k", "2", "--tokens", "160", "--batch-size", "16", "--eval-contexts", "0",
             "--init-rows", "64", "--no-progress", "--no-plots", "--log-every", "5",
             "--checkpoint-every", "10"]
    subprocess.run([str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node=2",
                    "-m", "trainer.cli", *flags, "--tp", "2", "--out",
                    str(tmp_path / "tp2")], check=True, env=env(), timeout=300)
    subprocess.run([sys.executable, "-m", "trainer.cli", *flags, "--out",
                    str(tmp_path / "one")], check=True, env=env(), timeout=300)
    subprocess.run([sys.executable, "-m", "cluster.train_job", "--workers", "2",
                    "--ray-storage", str(tmp_path / "ray"), *flags, "--tp", "2", "--out",
                    str(tmp_path / "ray-tp2")], check=True, env=env(), timeout=300)
    assert_close_weights(tmp_path / "one", tmp_path / "tp2")
    assert_close_weights(tmp_path / "one", tmp_path / "ray-tp2")  # Ray Train, the same
    for out in ("one", "tp2", "ray-tp2"):
        assert (tmp_path / out / "dictionaries" / "batchtopk-n24-k2" / "saelens"
                / "sae_weights.safetensors").exists()
