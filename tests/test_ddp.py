"""Data parallelism: gloo ranks in real processes, launched by hand, torchrun and Ray Train."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import HOOKS, RANK_TIMEOUT_S, fill_store, free_port, new_store
from tests.test_train import assert_same_weights, config, curves
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.ensemble import Ensemble, adam, warmup_decay
from trainer.training.train import train

pytestmark = pytest.mark.slow
D, STEPS = 6, 5
CONFIGS = [DictionaryConfig(arch="relu", d_model=D, latents=9, l1=0.05),
           DictionaryConfig(arch="topk", d_model=D, latents=40, k=1, dead_after_tokens=16),
           DictionaryConfig(arch="jumprelu", d_model=D, latents=9, l0=0.01)]


def batches(rows: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(rows, D, generator=gen, dtype=torch.float64) * 2 for _ in range(STEPS)]


def fit(rank: int, world: int) -> Ensemble:
    """STEPS steps; rank r takes rows [r*B, (r+1)*B) of each doubled batch."""
    ens = Ensemble(CONFIGS, adam(3e-2), seed=1, schedule=warmup_decay(STEPS, 2, 0.5))
    ens.to("cpu", torch.float64)
    if world > 1:
        ens.distribute(torch.device("cpu"))
    for x in batches(16):
        half = len(x) // world
        ens.step(x[rank * half:(rank + 1) * half])
    return ens


def _rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=RANK_TIMEOUT_S))
    try:
        ens = fit(rank, world)
        torch.save([m.state_dict() for m in ens.members], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_rank_on_the_doubled_batch(tmp_path: Path) -> None:
    out = str(tmp_path / "state")
    # TCP, not file://: a FileStore can strand the last rank once the others have left
    mp.start_processes(_rank, args=(2, f"tcp://127.0.0.1:{free_port()}", out), nprocs=2,
                       start_method="spawn")
    one = fit(0, 1)
    for rank in (0, 1):
        states = torch.load(f"{out}.{rank}")
        for member, state in zip(one.members, states, strict=True):
            for key, value in member.state_dict().items():
                torch.testing.assert_close(state[key], value, rtol=1e-9, atol=1e-11,
                                           msg=lambda m, k=key: f"{k}: {m}")
    # the topk member had dead latents, so AuxK and the shared counters were exercised
    assert int(one.members[1].tokens_since_fired.max()) >= 16


def env() -> dict[str, str]:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
         "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    e.pop("RAY_ADDRESS", None)
    return e


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
                       env=env(), timeout=300)
    assert_same_weights(plain, tmp_path / "tr1")
    assert curves(plain) == curves(tmp_path / "tr1")
    subprocess.run([sys.executable, "-m", "cluster.train_job", "--workers", "2",
                    "--ray-storage", str(tmp_path / "ray"), *flags(store, tmp_path / "ray2")],
                   check=True, env=env(), timeout=300)
    assert_same_weights(tmp_path / "tr2", tmp_path / "ray2")
    assert curves(tmp_path / "tr2") == curves(tmp_path / "ray2")
    # the two ranks really split the data: not the single-rank run
    assert curves(tmp_path / "tr2") != curves(plain)
