"""The run folder (trainer.training.run_dir): one run at a time, never mixed with another
run's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from actstore import StoreBusyError
from actstore.store.location import Location
from actstore.store.lock import JobLock
from tests.trainer.helpers import config
from trainer.training.logs import read_metrics
from trainer.training.train import train


def test_one_run_per_folder(store: str, tmp_path: Path) -> None:
    """A live run's folder is refused to a second run; a folder of another (finished or
    foreign) run is refused unless --overwrite, which replaces that run's files only."""
    out = tmp_path / "run"
    live = JobLock(Location.from_url(str(out)), "live-run")
    live.acquire()
    with pytest.raises(StoreBusyError, match=r"run folder .* in use by job 'live-run'"):
        train(config(store, out, tokens=160))
    live.release()
    assert not out.joinpath("metrics.jsonl").exists()  # the refused run wrote nothing
    out.joinpath("metrics.jsonl").write_text('{"step": 5}\n')
    out.joinpath("notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files of another run \(metrics.jsonl, "
                                         r"notes.txt\): pass --overwrite"):
        train(config(store, out, tokens=160))
    assert out.joinpath("metrics.jsonl").read_text() == '{"step": 5}\n'  # not truncated
    train(config(store, out, tokens=160, overwrite=True))
    assert [r["step"] for r in read_metrics(out)] == [5, 10]
    assert out.joinpath("notes.txt").read_text() == "mine"  # not ours: left alone
    assert not out.joinpath("lock").exists() or not any(out.joinpath("lock").iterdir())
    out.joinpath("a-file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(config(store, out / "a-file", tokens=160))
