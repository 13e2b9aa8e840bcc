"""TrainConfig (trainer.training.config): round trips, default schedules, the schedule
warning."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from tests.trainer.helpers import config
from trainer.training.config import TrainConfig, default_dead_window, default_lr, default_warmup
from trainer.training.ensemble import warmup_decay


def test_config_dataclass_round_trips(store: str, tmp_path: Path) -> None:
    cfg = config(store, tmp_path)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert [m.k for m in cfg.dictionaries(12)] == [2, 3]
    assert dataclasses.replace(cfg, latents=(8, 16)).dictionaries(12)[3].latents == 16


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
