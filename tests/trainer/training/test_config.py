"""TrainConfig (trainer.training.config): round trips, default schedules, the schedule
warning."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from actstore.shell.flags import field_docs
from tests.trainer.helpers import config
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.config import (
    KNOB,
    TrainConfig,
    default_dead_window,
    default_lr,
    default_warmup,
)
from trainer.training.defaults import DEFAULT_SPARSITY, MAX_DEFAULT_TOKENS
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


BASE = {"store": "s", "hook": "h", "latents": (1024,), "out": "o"}


def test_tokens_batch_and_sparsity_have_defaults_resolved_against_the_store() -> None:
    """Only a store, a hook, an architecture, a size and a folder are needed: the batch is
    4096 rows, --tokens one pass over the training rows in whole batches (at most
    MAX_DEFAULT_TOKENS), and each architecture trains at its default sparsity."""
    for arch, knob in KNOB.items():
        cfg = TrainConfig(arch=arch, **BASE)  # type: ignore[arg-type]
        assert (cfg.batch_size, cfg.tokens) == (4096, None)
        run = cfg.resolved(train_rows=116_000)
        assert (run.tokens, run.steps) == (28 * 4096, 28)
        assert getattr(run, knob) == DEFAULT_SPARSITY[arch]
        assert [getattr(m, knob) for m in run.dictionaries(384)] == list(DEFAULT_SPARSITY[arch])
        assert run.resolved(116_000) == run  # resolving twice changes nothing
    assert (TrainConfig(arch="topk", **BASE).resolved(10**12).tokens  # type: ignore[arg-type]
            == MAX_DEFAULT_TOKENS // 4096 * 4096)
    given = TrainConfig(arch="topk", tokens=8192, k=(8,), **BASE)  # type: ignore[arg-type]
    assert (given.resolved(116_000).tokens, given.resolved(116_000).k) == (8192, (8,))
    with pytest.raises(ValueError, match="3000 training rows, fewer than one batch of 4096"):
        TrainConfig(arch="topk", **BASE).resolved(3000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"--k 32 \(the default\) must be in \[1, latents=16\]"):
        TrainConfig(**{**BASE, "arch": "topk", "latents": (16,)})  # type: ignore[arg-type]


def test_jumprelu_settings_default_to_the_swept_ones_and_belong_to_jumprelu() -> None:
    run = TrainConfig(arch="jumprelu", **BASE).resolved(116_000)  # type: ignore[arg-type]
    member = run.dictionaries(384)[0]
    fields = {f.name: f.default for f in dataclasses.fields(DictionaryConfig)}
    assert (run.jump_init_threshold, run.jump_bandwidth) == (
        fields["jump_init_threshold"], fields["jump_bandwidth"])
    assert (member.jump_init_threshold, member.jump_bandwidth) == (
        fields["jump_init_threshold"], fields["jump_bandwidth"])
    given = TrainConfig(arch="jumprelu", jump_init_threshold=0.2, jump_bandwidth=0.01,
                        tokens=8192, **BASE)  # type: ignore[arg-type]
    member = given.dictionaries(384)[0]
    assert (member.jump_init_threshold, member.jump_bandwidth) == (0.2, 0.01)
    with pytest.raises(ValueError, match="--jump-bandwidth is jumprelu's"):
        TrainConfig(arch="topk", jump_bandwidth=0.1, **BASE)  # type: ignore[arg-type]
    assert TrainConfig(arch="topk", **BASE).resolved(116_000).jump_bandwidth is None  # type: ignore[arg-type]


def test_the_checkpoint_interval_follows_the_log_interval() -> None:
    """One interval given: the other is derived so that checkpoints fall on logging steps;
    both given and incompatible: refused in one line."""
    def intervals(**kw: int) -> tuple[int, int]:
        return TrainConfig(arch="topk", **BASE, **kw).intervals  # type: ignore[arg-type]
    assert intervals() == (50, 500)
    assert intervals(log_every=32) == (32, 512)  # the smallest multiple of 32 >= 500
    assert intervals(log_every=500) == (500, 500)
    assert intervals(log_every=700) == (700, 700)
    assert intervals(checkpoint_every=64) == (32, 64)  # the largest divisor of 64 <= 50
    assert intervals(checkpoint_every=97) == (1, 97)
    assert intervals(log_every=8, checkpoint_every=32) == (8, 32)
    with pytest.raises(ValueError, match=r"^--checkpoint-every \(500\) must be a multiple of "
                                         r"--log-every \(32\)"):
        intervals(log_every=32, checkpoint_every=500)
    run = TrainConfig(arch="topk", log_every=32, **BASE).resolved(116_000)  # type: ignore[arg-type]
    assert (run.log_every, run.checkpoint_every) == (32, 512)


def test_the_help_text_says_the_defaults_in_force() -> None:
    """The docstrings (--help) name the values the code uses, so they cannot drift apart."""
    docs = field_docs(TrainConfig)
    jump = {f.name: f.default for f in dataclasses.fields(DictionaryConfig)}
    for name in ("jump_init_threshold", "jump_bandwidth"):
        assert f"default: {jump[name]:g}," in docs[name]
    for arch, knob in KNOB.items():
        assert f"default: {DEFAULT_SPARSITY[arch][0]:g}" in docs[knob]
    assert f"at most {MAX_DEFAULT_TOKENS:,})" in docs["tokens"]
