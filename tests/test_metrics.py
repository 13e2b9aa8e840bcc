"""Metrics are the quantities they are named after, for every architecture."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.config import TrainConfig, default_dead_window, default_lr, default_warmup
from trainer.training.ensemble import Ensemble, adam, warmup_decay
from trainer.training.metrics import Meter

# jumprelu's L0 coefficient is far from 1, so a penalty logged as "l0" would show.
KNOBS: dict[str, dict[str, Any]] = {"relu": {"l1": 0.3}, "topk": {"k": 5},
                                    "batchtopk": {"k": 5}, "jumprelu": {"l0": 0.05}}


@pytest.mark.parametrize("arch", list(KNOBS))
def test_logged_l0_fvu_and_mse_match_the_codes(arch: str) -> None:
    torch.manual_seed(0)
    cfg = DictionaryConfig(arch=arch, d_model=16, latents=64, dead_after_tokens=10**6,  # type: ignore[arg-type]
                           **KNOBS[arch])
    ens = Ensemble([cfg], adam(1e-3), seed=0)
    meter = Meter(ens.members, torch.device("cpu"))
    l0s, sse, ssdev, rows = [], 0.0, 0.0, 0
    seen = torch.zeros(64, dtype=torch.bool)
    for _ in range(3):
        x = torch.randn(32, 16) * 2 + 1
        (out,) = ens.step(x)
        meter.add(x, [out])
        z = out.z.to_dense() if out.z.is_sparse else out.z  # sparse from the sparse step
        l0s.append((z.detach() != 0).sum(-1).float().mean())
        # the counts come from the selections (topk, batchtopk): the same as a dense pass
        assert torch.equal(out.fired, (z.detach() != 0).sum(0))
        seen |= (z.detach() != 0).any(0)
        sse += float(((out.x_hat.detach() - x) ** 2).sum())
        ssdev += float(((x - x.mean(0)) ** 2).sum())
        rows += len(x)
    (line,) = meter.flush()
    assert line["l0"] == pytest.approx(float(torch.stack(l0s).mean()), rel=1e-6)
    assert line["l0"] > 1  # not a penalty term scaled by a small coefficient
    assert line["silent"] == int((~seen).sum())
    assert line["mse"] == pytest.approx(sse / rows, rel=1e-5)
    assert line["fvu"] == pytest.approx(sse / ssdev, rel=1e-5)
    penalty = {"relu": "l1_loss", "jumprelu": "l0_loss"}.get(arch, "aux_loss")
    assert penalty in line


def test_default_schedule_scales_with_the_run_and_the_dictionary() -> None:
    assert default_lr(16384) == pytest.approx(4e-4)
    assert default_lr(4096) == pytest.approx(8e-4)  # 1 / sqrt(latents)
    assert default_warmup(64) == 3
    assert default_warmup(100_000) == 1000
    assert default_dead_window(262_144, 4096) == 26_214
    assert default_dead_window(10**10, 4096) == 10_000_000
    base = {"store": "s", "hook": "h", "arch": "topk", "latents": (1024, 4096), "k": (8,),
            "tokens": 64 * 4096, "batch_size": 4096, "out": "o"}
    cfg = TrainConfig(**base)  # type: ignore[arg-type]
    assert [cfg.lr_of(m) for m in cfg.dictionaries(16)] == [default_lr(1024), default_lr(4096)]
    assert [m.dead_after_tokens for m in cfg.dictionaries(16)] == [26_214, 26_214]
    assert cfg.warmup == 3
    assert cfg.schedule_warning() is None
    late = TrainConfig(**{**base, "warmup_steps": 60})  # type: ignore[arg-type]
    assert "never reaches its peak" in str(late.schedule_warning())
    fixed = TrainConfig(**{**base, "lr": 1e-3})  # type: ignore[arg-type]
    assert {fixed.lr_of(m) for m in fixed.dictionaries(16)} == {1e-3}


def test_schedule_warning_is_exactly_when_the_peak_is_never_reached() -> None:
    for steps, warm, decay in itertools.product(range(1, 30), range(35),
                                                (0.0, 0.3, 0.8, 1.0)):
        factor = warmup_decay(steps, warm, decay)
        peaks = max(factor(s) for s in range(steps)) >= 1 - 1e-12
        cfg = TrainConfig(store="s", hook="h", arch="topk", latents=(8,), k=(1,),
                          tokens=steps, batch_size=1, out="o", warmup_steps=warm,
                          decay_start=decay)
        assert (cfg.schedule_warning() is None) == peaks, (steps, warm, decay)
