"""Helpers of the trainer's tests: a small training config, a run's weights and curves,
a run killed at a step, and the environment of launched processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import HOOKS
from trainer.training import ensemble
from trainer.training.config import TrainConfig
from trainer.training.logs import read_metrics


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


def die_at_step(m: pytest.MonkeyPatch, n: int) -> None:
    """The n-th training step raises KeyboardInterrupt, as a run killed there would stop."""
    real_step = ensemble.Ensemble.step
    calls = {"n": 0}

    def dying_step(self: ensemble.Ensemble, x: torch.Tensor, autocast: bool = False,
                   y: torch.Tensor | None = None) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, x, autocast, y)
    m.setattr(ensemble.Ensemble, "step", dying_step)


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for key in wa[name]:
            torch.testing.assert_close(wb[name][key], wa[name][key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name, k=key: f"{n} {k}: {m}")


def env() -> dict[str, str]:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
         "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    e.pop("RAY_ADDRESS", None)
    return e
