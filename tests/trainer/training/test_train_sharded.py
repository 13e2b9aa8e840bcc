"""`actstore train --tp` (trainer.training.train): the training loop with latents sharded
over gloo ranks in real processes equals the plain run, and its checkpoints resume at
another tp."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import free_port
from tests.trainer.helpers import assert_close_weights, config, die_at_step, weights
from trainer.training.config import TrainConfig
from trainer.training.logs import read_metrics
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


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_a_tp2_skip_transcoder_equals_the_plain_run(store: str, tmp_path: Path,
                                                    arch: str) -> None:
    """Latents sliced over two gloo ranks, W_skip and b_dec replicated: the same parameters
    as one process (topk: the sparse step; jumprelu: the dense one)."""
    knobs: dict[str, Any] = {"k": (3,)} if arch == "topk" else {"k": (), "l0": (0.01,)}
    common: dict[str, Any] = {"arch": arch, "kind": "transcoder", "target_hook": "encoder.layer.3",
                              "skip": True, **knobs}
    train(settings(store, tmp_path / "plain", **common))
    run_ranks(2, settings(store, tmp_path / "tp2", tp=2, **common))
    assert_close_weights(tmp_path / "plain", tmp_path / "tp2")


def test_tp2_started_from_a_dictionary_equals_the_plain_run(store: str, tmp_path: Path) -> None:
    """`--init-from` under `--tp 2`: each rank copies its slice of the latents, and the two
    ranks train on as the plain run does from the same dictionary (its SAELens export)."""
    train(settings(store, tmp_path / "first", k=(3,)))
    (name,) = weights(tmp_path / "first")
    source = str(tmp_path / "first" / "dictionaries" / name / "saelens")
    train(settings(store, tmp_path / "plain", k=(3,), init_from=source))
    run_ranks(2, settings(store, tmp_path / "tp2", k=(3,), tp=2, init_from=source))
    assert_close_weights(tmp_path / "plain", tmp_path / "tp2")
    fresh = tmp_path / "fresh"  # the start mattered: from scratch the run ends elsewhere
    train(settings(store, fresh, k=(3,)))
    assert not torch.allclose(weights(fresh)[name]["W_dec"],
                              weights(tmp_path / "plain")[name]["W_dec"], atol=1e-3)
