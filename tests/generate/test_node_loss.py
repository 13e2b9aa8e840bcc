"""Losing a Ray node mid-job, on a real multi-node Ray cluster started on this machine
(`ray.cluster_utils.Cluster`, one CPU per node, so a lost node's replacement worker has nowhere
to go): the survivors finish the job; with no worker left, or without the head node, the job
ends within a bounded time in one line, and a rerun resumes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from actstore import ActivationStore
from actstore.generate.pipeline import generate
from actstore.store.errors import StoreError
from actstore.store.verify import verify
from tests.generate.helpers import config

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _cluster(head_cpus: int) -> Iterator[tuple[Cluster, list[Any]]]:
    """A head with `head_cpus` CPUs and two more one-CPU nodes, no driver connected yet; all
    shut down on the way out."""
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    try:
        added = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        yield c, added
    finally:
        ray.shutdown()
        c.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, list[Any]]]:
    """`_cluster`, its head's CPUs the test's parameter (1 unless given: 0 runs no worker)."""
    with _cluster(getattr(request, "param", 1)) as made:
        yield made


def _when_writing(out: Path, action: Any) -> threading.Thread:
    """Run `action` once the first shard is being written (every worker is then loaded)."""
    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if list(out.glob("*/leases/shard-*/zarr.json")):
                action()
                return
            time.sleep(0.02)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _job(models: dict[str, str], out: Path, c: Cluster, workers: int) -> Any:
    # Many small shards, one context per forward pass: the job outlasts the kill.
    cfg = config(models["gpt2"], ("transformer.h.0",), out, max_tokens=96000, batch_size=1)
    return replace(cfg, address=c.address, workers=workers, cpus_per_worker=1.0,
                   executor="ray")


def test_a_lost_node_s_shards_go_to_the_survivors(
        cluster: tuple[Cluster, list[Any]], models: dict[str, str], tmp_path: Path) -> None:
    """The lost node's worker is not replaced (no room: one CPU per node) and not waited
    for: the two others commit every shard."""
    c, nodes = cluster
    killer = _when_writing(tmp_path, lambda: c.remove_node(nodes[0], allow_graceful=False))
    result = generate(_job(models, tmp_path, c, workers=3))
    killer.join(timeout=1)
    assert not killer.is_alive(), "the node was not killed"
    store = ActivationStore.open(result.url)
    assert store.complete
    assert verify(store).ok
    pids = {store.commit_record(s)["pid"] for s in range(store.num_shards)}
    assert len(pids) >= 2


@pytest.mark.parametrize("cluster", [0], indirect=True)  # a head that runs no worker
def test_no_worker_left_ends_in_one_line_and_a_rerun_resumes(
        cluster: tuple[Cluster, list[Any]], models: dict[str, str], tmp_path: Path) -> None:
    c, nodes = cluster
    cfg = _job(models, tmp_path, c, workers=2)

    def kill_both() -> None:
        for node in nodes:
            c.remove_node(node, allow_graceful=False)
    killer = _when_writing(tmp_path, kill_both)
    with pytest.raises(StoreError, match=r"no worker left .* rerun the same command") as e:
        generate(cfg)
    assert "\n" not in str(e.value)
    killer.join(timeout=1)
    c.add_node(num_cpus=1)  # a node comes back: the rerun finishes what is missing
    c.wait_for_nodes()
    store = ActivationStore.open(generate(cfg).url)
    assert store.complete
    assert verify(store).ok


def test_losing_the_head_ends_the_driver_in_one_line_and_a_rerun_resumes(
        models: dict[str, str], tmp_path: Path) -> None:
    """`actstore generate` in its own process; the head is SIGKILLed mid-job. Ray's client
    alone would end the driver after 60 s with its own message."""
    cmd = [sys.executable, "-m", "actstore", "generate", "--model", models["gpt2"],
           "--hook", "transformer.h.0", "--dataset", "builtin:pydoc", "--context-length", "32",
           "--max-tokens", "96000", "--batch-size", "1", "--workers", "3",
           "--cpus-per-worker", "1", "--out", str(tmp_path), "--no-progress"]
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with _cluster(1) as (c, _):
        driver = subprocess.Popen([*cmd, "--address", c.address], stderr=subprocess.PIPE,
                                  text=True, env=env, cwd=repo)
        try:
            killer = _when_writing(tmp_path, lambda: c.remove_node(
                c.head_node, allow_graceful=False))  # type: ignore[arg-type]
            killer.join(timeout=600)
            killed_at = time.monotonic()
            _, err = driver.communicate(timeout=120)
            took = time.monotonic() - killed_at
        finally:
            driver.kill()
    assert driver.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert "lost the Ray head node" in last
    assert "rerun the same command to resume" in last
    assert took < 50, f"the driver took {took:.0f}s to stop"
    with _cluster(1) as (c, _):  # a new cluster: the rerun finishes the store
        subprocess.run([*cmd, "--address", c.address], check=True, env=env, cwd=repo,
                       timeout=900)
    store = ActivationStore.open(str(next(tmp_path.glob("*/zarr.json")).parent))
    assert store.complete
    assert verify(store).ok
