"""Where `generate` runs: Ray workers, or one worker in this process when Ray would not pay."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from actstore import ActivationStore
from actstore.generate.config import GenerateConfig
from actstore.generate.executors.choose import choose_executor
from actstore.generate.executors.local import local_cores
from actstore.generate.pipeline import generate
from actstore.store.verify import verify
from tests.gen_fixtures import LAYERS, minilm_cfg, save_tiny
from tests.test_generate import assert_matches_forward


def _cfg(out: Path, **kw: object) -> GenerateConfig:
    return minilm_cfg(out, **{"device": "cpu", **kw})  # CPU: the plans are the same anywhere


@pytest.mark.parametrize(("kw", "env", "local"), [
    ({}, "", True),                              # a local job: in this process
    ({}, "10.0.0.1:6379", False),                # a cluster in RAY_ADDRESS
    ({"address": "auto"}, "", False),            # ...or in --address
    ({"workers": 2}, "", False),                 # workers asked for
    ({"cpus_per_worker": 1.0}, "", False),
    ({"executor": "ray"}, "", False),
    ({"executor": "local"}, "", True),
])
def test_the_executor_follows_the_rules(kw: dict[str, object], env: str, local: bool,
                                        tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", env)
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # no Ray started in this process
    executor = choose_executor(_cfg(tmp_path, **kw))
    why = executor.why
    assert (executor.name == "local") == local, why
    assert why
    if local:
        plan = executor.start()
        assert (plan.executor, plan.workers, plan.threads) == ("local", 1, local_cores())
        assert "in this process, no Ray" in plan.describe()


def test_several_gpus_get_a_ray_worker_each(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "")
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    executor = choose_executor(_cfg(tmp_path, device=None))
    assert executor.name == "ray"
    assert "4 GPUs" in executor.why
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    executor = choose_executor(_cfg(tmp_path, device=None))
    assert executor.name == "local"
    assert executor.start().device == "cuda"


def test_a_ray_started_in_this_process_is_used(tmp_path: Path) -> None:
    class FakeRay:  # what choose_executor reads of the ray module
        @staticmethod
        def is_initialized() -> bool:
            return True
    with pytest.MonkeyPatch.context() as m:
        m.setitem(sys.modules, "ray", FakeRay)
        m.setenv("RAY_ADDRESS", "")
        executor = choose_executor(_cfg(tmp_path))
    assert executor.name == "ray"
    assert "already initialised" in executor.why


@pytest.mark.parametrize("kw", [{"executor": "local", "address": "h:1"},
                                {"executor": "local", "workers": 2},
                                {"executor": "remote"}])
def test_impossible_executor_flags_are_refused(kw: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--executor"):
        _cfg(tmp_path, **kw)


@pytest.mark.slow
def test_a_short_local_job_runs_in_this_process(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """No Ray started, the plan said on the first line, every row equal to a forward pass, and
    this process's torch threads as they were."""
    monkeypatch.setenv("RAY_ADDRESS", "")
    model = save_tiny("llama", tmp_path)
    hook = LAYERS["llama"].format(1)
    threads = torch.get_num_threads()
    capsys.readouterr()  # what saving the model printed
    cfg = _cfg(tmp_path / "out", model=model, hooks=(hook,), context_length=32,
               max_tokens=3000, batch_size=4, progress=True)
    result = generate(cfg)
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert first.startswith("generate: 1 CPU worker")
    assert "in this process, no Ray" in first
    assert torch.get_num_threads() == threads
    store = ActivationStore.open(result.url)
    assert store.complete
    assert store.num_shards >= 4
    assert verify(store).ok
    assert_matches_forward(result.url, model, {hook: 1})


@pytest.mark.slow
def test_an_error_stops_an_in_process_run_and_a_rerun_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real error while writing (not a passing fault) stops the run with that error, the
    other shard in flight stops too, the lock is released, and the same command again
    completes the store."""
    import actstore.generate.worker

    monkeypatch.setenv("RAY_ADDRESS", "")
    model = save_tiny("gpt2", tmp_path)
    cfg = _cfg(tmp_path / "out", model=model, hooks=(LAYERS["gpt2"].format(1),),
               context_length=32, max_tokens=4000, batch_size=2)
    real = actstore.generate.worker.write_shard
    calls: list[int] = []

    def failing(store: ActivationStore, shard: int, *args: object, **kw: object) -> None:
        calls.append(shard)
        if len(calls) == 2:
            raise ValueError("the disk refused this shard")
        real(store, shard, *args, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(actstore.generate.worker, "write_shard", failing)
    with pytest.raises(ValueError, match="the disk refused"):
        generate(cfg)
    store = ActivationStore.open(next(p for p in (tmp_path / "out").iterdir()).as_posix())
    assert len(calls) <= 3  # the shard computing beside it stopped at its next batch
    assert store.num_shards >= 4
    done = store.shards_done()
    assert 1 <= len(done) < store.num_shards
    monkeypatch.setattr(actstore.generate.worker, "write_shard", real)
    result = generate(cfg)  # the lock was released: the rerun takes it and finishes
    assert result.tokens == store.num_rows - sum(
        b - a for a, b in map(store.layout.shard_rows_range, done))
    assert verify(ActivationStore.open(result.url)).ok
