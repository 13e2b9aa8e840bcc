"""The launchers of the same training: torchrun (trainer.cli) and Ray Train
(cluster.train_job), with and without --tp, equal a plain process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HOOKS, fill_store, new_store
from tests.trainer.helpers import (
    assert_close_weights,
    assert_same_weights,
    config,
    curves,
    env,
)
from trainer.training.train import train

# Each command is seconds on an idle machine; on a saturated one Ray Train's workers alone
# take minutes to start (cluster.train_job allows them 600 s): the limits guard a hung run only.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

def flags(store: str, out: Path) -> list[str]:
    return ["--store", store, "--hook", HOOKS[0], "--arch", "topk", "--latents", "24",
            "--k", "2", "3", "--tokens", "320", "--batch-size", "16", "--out", str(out),
            "--log-every", "5", "--checkpoint-every", "10", "--eval-contexts", "0",
            "--init-rows", "64", "--warmup-steps", "4", "--dead-after-tokens", "64",
            "--lr", "0.01", "--no-progress", "--no-plots"]


def test_torchrun_and_ray_train_run_the_same_training(tmp_path: Path) -> None:
    """One torchrun rank equals a plain process; two torchrun ranks equal two Ray Train
    workers: the same code and numbers under each launcher."""
    store = str(tmp_path / "store")
    fill_store(new_store(store))
    bin_dir = Path(sys.executable).parent
    plain = tmp_path / "plain"
    train(config(store, plain, tokens=320))
    for n, out in ((1, "tr1"), (2, "tr2")):
        subprocess.run([str(bin_dir / "torchrun"), "--standalone", f"--nproc-per-node={n}",
                        "-m", "trainer.cli", *flags(store, tmp_path / out)], check=True,
                       env=env(), timeout=900)
    assert_same_weights(plain, tmp_path / "tr1")
    assert curves(plain) == curves(tmp_path / "tr1")
    subprocess.run([sys.executable, "-m", "cluster.train_job", "--workers", "2",
                    "--ray-storage", str(tmp_path / "ray"), *flags(store, tmp_path / "ray2")],
                   check=True, env=env(), timeout=900)
    assert_same_weights(tmp_path / "tr2", tmp_path / "ray2")
    assert curves(tmp_path / "tr2") == curves(tmp_path / "ray2")
    # the two ranks really split the data: not the single-rank run
    assert curves(tmp_path / "tr2") != curves(plain)


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
                    str(tmp_path / "tp2")], check=True, env=env(), timeout=900)
    subprocess.run([sys.executable, "-m", "trainer.cli", *flags, "--out",
                    str(tmp_path / "one")], check=True, env=env(), timeout=900)
    subprocess.run([sys.executable, "-m", "cluster.train_job", "--workers", "2",
                    "--ray-storage", str(tmp_path / "ray"), *flags, "--tp", "2", "--out",
                    str(tmp_path / "ray-tp2")], check=True, env=env(), timeout=900)
    assert_close_weights(tmp_path / "one", tmp_path / "tp2")
    assert_close_weights(tmp_path / "one", tmp_path / "ray-tp2")  # Ray Train, the same
    for out in ("one", "tp2", "ray-tp2"):
        assert (tmp_path / out / "dictionaries" / "batchtopk-n24-k2" / "saelens"
                / "sae_weights.safetensors").exists()
