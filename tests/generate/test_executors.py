"""Where `generate` runs (actstore.generate.executors): the choice between Ray workers and
one worker in this process, the Ray cluster's reach and plan, and the pool's retries
of shards whose upload failed or whose worker died. The tests that start a Ray session come
last: the others check that none is running."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import pytest
import ray
import torch

from actstore import ActivationStore
from actstore.generate.config import GenerateConfig
from actstore.generate.executors import pool
from actstore.generate.executors.choose import choose_executor
from actstore.generate.executors.local import local_cores
from actstore.generate.executors.ray_cluster import RayUnavailableError, plan_workers, ray_address
from actstore.generate.pipeline import generate
from actstore.store.verify import verify
from tests.faults import FlakyProxy
from tests.gen_fixtures import LAYERS, minilm_cfg, save_tiny
from tests.generate.helpers import assert_matches_forward, config


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


@pytest.mark.slow
def test_unreachable_ray_fails_in_one_line_before_the_lock(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(RayUnavailableError, match=r"cannot reach the Ray cluster at 127.0.0.1:1 "
                                                  r"\(from RAY_ADDRESS\) within 10s"):
        generate(minilm_cfg(tmp_path))
    assert time.monotonic() - started < 60
    assert not list(tmp_path.rglob("lock"))  # no lock was taken, nothing to clean up
    assert ray_address(minilm_cfg(tmp_path, address="h:1")) == ("h:1", "--address")
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert ray_address(minilm_cfg(tmp_path)) == (None, "a local Ray started here")


@pytest.mark.slow
def test_a_cluster_without_the_resources_asked_for_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RayUnavailableError, match=r"has \d+ CPU, a worker needs 64"):
        generate(minilm_cfg(tmp_path, cpus_per_worker=64.0))
    assert not ray.is_initialized()
    assert not list(tmp_path.rglob("lock"))


@pytest.mark.parametrize(("workers", "cpus", "cores", "want"), [
    (None, None, 2, (2, 1.0, 1)), (None, None, 16, (16, 1.0, 1)), (1, None, 2, (1, 2.0, 2)),
    (3, None, 16, (3, 5.0, 5)), (None, 4.0, 16, (4, 4.0, 4)), (2, 0.5, 2, (2, 0.5, 1))])
def test_cpu_workers_use_every_core_by_default(workers: int | None, cpus: float | None,
                                               cores: int, want: tuple[int, float, int],
                                               tmp_path: Path) -> None:
    plan = plan_workers(minilm_cfg(tmp_path, workers=workers, cpus_per_worker=cpus,
                                      device="cpu"), float(cores), 0.0)
    assert (plan.workers, plan.cpus, plan.threads) == want
    assert plan.workers * plan.cpus <= cores


class NeverReady(pool.ShardPool):
    """Workers that never become ready (Ray cannot place them, or their model load hangs)."""

    def __init__(self, store: ActivationStore, start_s: float) -> None:
        self.stopped: list[object] = []
        super().__init__(store, 2, max_retries=2, start_s=start_s)

    def _start(self) -> object:
        return object()

    def _ready(self, worker: Any) -> Future[None]:  # noqa: ARG002
        return Future()  # never done

    def _submit(self, worker: Any, shard: int) -> Any:  # noqa: ARG002
        raise AssertionError("a shard went to a worker that was never ready")

    def _wait(self, handles: list[Any], timeout: float) -> list[Any]:
        time.sleep(min(timeout, 0.02))
        return [h for h in handles if h.done()]

    def _result(self, handle: Any) -> int:  # noqa: ARG002
        raise AssertionError("no shard ran")

    def _stop(self, worker: Any) -> None:
        self.stopped.append(worker)

    def shutdown(self) -> None:
        pass


def test_workers_that_never_start_are_reported_and_given_up(
        store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The wait for workers to start is said while it lasts and bounded by --worker-start-s:
    each worker not ready by then is stopped and replaced, up to --max-retries, then the run
    stops in one line (whatever the machine's speed: the bound is a time, not a count)."""
    monkeypatch.setattr(pool, "REPORT_S", 0.1)
    monkeypatch.setattr(pool, "POLL_S", 0.02)
    never = NeverReady(ActivationStore.open(store), start_s=0.4)
    with pytest.raises(RuntimeError, match=r"^3 workers failed to start: a worker did not "
                       r"start within --worker-start-s 0\.4$"):
        never.run([0, 1], progress=False, desc="test")
    assert len(never.stopped) == 3  # the first two, then the first of their replacements
    assert set(never.since) == set(never.starting.values())  # only those still starting
    err = capsys.readouterr().err
    assert "worker(s) to start (to be placed by Ray and load the model" in err
    assert "--worker-start-s 0.4 bounds it" in err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("executor", ["ray", "local"])
def test_s3_outage_during_uploads_is_retried(executor: str, models: dict[str, str],
                                             s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Workers (Ray's, or the one in this process) reach S3 through a proxy that goes down for
    a few seconds while shards are written: the failed uploads are retried with backoff and
    the store ends complete."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)))
    # The proxy goes in the store's fsspec options, not the environment: fsspec caches
    # filesystems by their arguments, so an environment endpoint would leave the cached
    # default filesystem pointing at the closed proxy for the checks below and later tests.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the S3 client's own retries would hide it
    direct = fsspec.filesystem("s3", skip_instance_cache=True,
                               endpoint_url=s3_endpoint)  # the test's own view, no proxy
    name = f"s3://actstore-test/outage-{os.getpid()}-{executor}"
    cfg = config(models["gpt2"], ("transformer.h.0",), Path("/unused"), max_tokens=8000,
                 shard_mib=1, batch_size=2)
    cfg = replace(cfg, out=name, executor=executor,
                  storage_options={"endpoint_url": f"http://127.0.0.1:{proxy.port}"},
                  **({"workers": None, "cpus_per_worker": None} if executor == "local" else {}))

    running = threading.Event()
    running.set()

    def outage_at_first_lease() -> None:
        # Waits as long as the job runs: workers start in ~10 s on an idle machine, but in
        # minutes on a saturated one, and a fixed deadline here missed the outage then.
        while running.is_set():
            if direct.glob(f"{name.removeprefix('s3://')}/*/leases/shard-*/zarr.json"):
                proxy.outage(True)
                time.sleep(4)
                proxy.outage(False)
                return
            direct.invalidate_cache()
            time.sleep(0.05)
    watcher = threading.Thread(target=outage_at_first_lease)
    watcher.start()
    try:
        result = generate(cfg)
    finally:
        running.clear()
        watcher.join()
        proxy.close()
    assert proxy.cut > 0  # the outage happened while the job ran
    assert "retry 1/3" in capsys.readouterr().err
    store = ActivationStore.open(result.url)
    assert store.complete
    assert verify(store).ok


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_killed_worker_has_its_shard_retried(models: dict[str, str], tmp_path: Path) -> None:
    cfg = config(models["llama"], ("model.layers.1",), tmp_path, max_tokens=12000,
                 batch_size=1, shard_mib=1)
    killed: list[int] = []
    running = threading.Event()
    running.set()

    def kill_first_writer() -> None:  # a lease names its writer's pid: kill that process
        while running.is_set() and not killed:  # as long as the job runs, however slow
            for lease in tmp_path.glob("*/leases/shard-*/zarr.json"):
                try:
                    pid = json.loads(lease.read_text())["attributes"]["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_writer)
    killer.start()
    try:
        result = generate(cfg)
    finally:
        running.clear()
        killer.join()
    assert killed, "no worker was killed"
    store = ActivationStore.open(result.url)
    assert store.complete
    report = verify(store)  # every context exactly once, every chunk sound
    assert report.ok, report.problems
    assert all(store.commit_record(s)["pid"] != killed[0] for s in range(store.num_shards))
