"""Faults across the layers, through the real command in a fresh process: a killed
driver takes its local Ray and workers with it, an unreachable S3 endpoint is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actstore import (
    ActivationStore,
)
from actstore.store.processes import alive, descendants
from tests.gen_fixtures import save_tiny


@pytest.mark.slow
def test_workers_and_local_ray_die_with_a_killed_driver(tmp_path: Path) -> None:
    """SIGKILL the driver of `actstore generate` mid-job: the local Ray it started and its
    workers go too, and no shard is committed after that."""
    model = save_tiny("llama", tmp_path)
    out = tmp_path / "stores"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    with (tmp_path / "err").open("wb") as err:
        driver = subprocess.Popen(
            [sys.executable, "-m", "actstore", "generate", "--model", model, "--hook",
             "model.layers.1", "--dataset", "builtin:pydoc", "--context-length", "32",
             "--max-tokens", "60000", "--batch-size", "1", "--shard-mib", "1", "--workers", "2",
             "--out", str(out), "--no-progress"], env=env, stderr=err)
    # Only a guard against a hung job: Ray and two workers loading the model take ~20 s on an
    # idle machine and minutes on a saturated one.
    deadline = time.monotonic() + 900
    while not list(out.glob("*/commits/shard-*/zarr.json")):
        assert driver.poll() is None, (tmp_path / "err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no shard was committed in time"
        time.sleep(0.1)
    tree = descendants(driver.pid)
    assert len(tree) >= 4  # Ray's processes and the two workers at least
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 300  # the reaper's notice plus Ray's shutdown, under load
    while any(alive(p) for p in tree):
        assert time.monotonic() < deadline, f"still alive: {[p for p in tree if alive(p)]}"
        time.sleep(0.2)
    committed = len(list(out.glob("*/commits/shard-*/zarr.json")))
    time.sleep(3)
    assert len(list(out.glob("*/commits/shard-*/zarr.json"))) == committed
    store = ActivationStore.open(str(next(out.iterdir())))
    assert not store.complete  # it really was killed mid-job


def test_unreachable_s3_endpoint_is_one_line() -> None:
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    for argv in (["ls", "s3://some-bucket/stores"], ["info", "s3://some-bucket/stores/k"]):
        done = subprocess.run([sys.executable, "-m", "actstore", *argv], env=env,
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        err = done.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert "127.0.0.1:1" in err
