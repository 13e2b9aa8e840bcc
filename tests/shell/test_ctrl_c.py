"""Ctrl-C at any moment of `actstore train`, `eval` and `toy` (real processes, interrupted at a
named point by tests/interrupt_at.py, not after a delay): one line on stderr that says how to
go on, exit 130, nothing half-written taken for complete, and the rerun finishes the job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actstore.shell.main import main
from actstore.store.activation_store import ActivationStore
from tests.helpers import HOOKS
from tests.trainer.evaluation.helpers import _run
from tests.trainer.helpers import assert_same_weights, config, curves, env
from trainer.cli import RESUME_HINT
from trainer.evaluation.cli import RESUME_HINT as EVAL_HINT
from trainer.training import checkpoint
from trainer.training.train import train

ROOT = Path(__file__).parents[2]
#: A generous bound for one small command on a loaded 2-core machine; not a timing.
DEADLINE_S = 600


def interrupted(point: str, n: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`actstore ARGS` in its own process, Ctrl-C at the n-th time it reaches `point`."""
    e = {**env(), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tests.interrupt_at", point, str(n), *args],
                          cwd=ROOT, env=e, capture_output=True, text=True, timeout=DEADLINE_S,
                          check=False)


def assert_one_line(done: subprocess.CompletedProcess[str], command: str, hint: str) -> None:
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [f"actstore {command}: interrupted; {hint}"]


def train_args(store: str, out: Path) -> list[str]:
    """The flags of tests.trainer.helpers.config(store, out)."""
    return ["train", "--store", store, "--hook", HOOKS[0], "--arch", "topk", "--latents", "24",
            "--k", "2", "3", "--tokens", "640", "--batch-size", "16", "--out", str(out),
            "--log-every", "5", "--checkpoint-every", "10", "--eval-contexts", "0",
            "--no-progress", "--init-rows", "64", "--warmup-steps", "4",
            "--dead-after-tokens", "64", "--lr", "0.01", "--no-plots"]


@pytest.fixture(scope="module")
def whole(store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run uninterrupted."""
    out = tmp_path_factory.mktemp("whole")
    train(config(store, out))
    return out


@pytest.mark.parametrize(("at", "kept"), [
    (("step", 25), 20),                # mid-training
    (("checkpoint-written", 2), 10),   # DCP wrote step 20's files, not yet swapped in
    (("checkpoint-swap", 1), 10),      # step 10's moved aside, step 20's not yet in place
    (("torch-save", 2), 10),           # inside torch.save, writing step 20's checkpoint
    (("dictionaries", 1), 40),         # the last checkpoint written, the dictionaries half
])
def test_train_interrupted_resumes_to_the_uninterrupted_weights(
        store: str, tmp_path: Path, whole: Path, at: tuple[str, int], kept: int) -> None:
    out, (point, n) = tmp_path / "run", at
    assert_one_line(interrupted(point, n, train_args(store, out)), "train", RESUME_HINT)
    cfg = config(store, out, resume=True)
    meta = checkpoint.load_meta(out, cfg, cfg.dictionaries(12, None), finished=False)
    assert meta["step"] == kept  # the last checkpoint, whole
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / ".finished").exists()
    assert train(cfg).steps == 40
    assert_same_weights(out, whole)
    assert curves(out) == curves(whole)


def test_eval_interrupted_leaves_no_report_that_looks_complete(tmp_path: Path) -> None:
    run, _, _ = _run(tmp_path, 0.5)
    report = tmp_path / "report"
    args = ["eval", "--run", str(run), "--out", str(report), "--ica", "none", "--ks", "1", "12",
            "--splice-contexts", "0"]
    assert main(args) == 0  # an older report there: the interrupted one must not pass for it
    assert_one_line(interrupted("report", 1, args), "eval", EVAL_HINT)
    assert not (report / "eval.json").exists()
    assert not (report / "index.html").exists()
    assert not [p.name for p in report.iterdir() if ".tmp" in p.name]
    assert main(args) == 0
    assert (report / "eval.json").exists()
    assert (report / "index.html").exists()


def test_toy_interrupted_keeps_its_committed_shards_and_the_rerun_completes(
        tmp_path: Path) -> None:
    args = ["toy", "--out", str(tmp_path / "stores"), "--d", "8", "--features", "16",
            "--active", "2", "--rows", "4000"]
    # shards of 1,024 rows (`interrupt_at`'s for a toy): Ctrl-C before the third commits
    assert_one_line(interrupted("shard", 3, args), "toy", "rerun the same command to resume")
    (url,) = (tmp_path / "stores").iterdir()
    store = ActivationStore.open(str(url))
    assert store.shards_missing() == [2, 3]
    commits = {p.name: p.stat().st_mtime_ns for p in (url / "commits").iterdir()}
    rerun = interrupted("shard", 0, args)  # never interrupted; the same small shards
    assert rerun.returncode == 0, rerun.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (url / "commits").iterdir()
            if p.name in commits} == commits  # shards 0 and 1 were not written again
    store = ActivationStore.open(str(url))
    assert store.shards_missing() == []
    whole = interrupted("shard", 0, [*args[:2], str(tmp_path / "whole"), *args[3:]])
    assert whole.returncode == 0, whole.stderr
    (other,) = (tmp_path / "whole").iterdir()
    assert torch.equal(store.read_torch("toy", 0, 4000),
                       ActivationStore.open(str(other)).read_torch("toy", 0, 4000))


def test_a_swap_cut_short_never_leaves_a_half_removed_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a swap cut short, `.checkpoint.previous` is the only checkpoint: the next swap
    removes it only once the new one is in place."""
    checkpoint._previous(tmp_path).mkdir()
    (checkpoint._previous(tmp_path) / "data").write_text("step 10")
    new = tmp_path / ".checkpoint.new.tmp"
    new.mkdir()
    (new / "data").write_text("step 20")

    def ctrl_c(*_: object, **__: object) -> None:
        raise KeyboardInterrupt
    monkeypatch.setattr("trainer.training.checkpoint.shutil.rmtree", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        checkpoint._swap(new, tmp_path)
    where = checkpoint.found(tmp_path)
    assert where is not None
    assert (where / "data").read_text() == "step 20"
