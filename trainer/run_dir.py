"""The run folder (`--out`): one run at a time, never mixed with another run's files.

Rank 0 takes the folder's lock (the store's `JobLock`: a lease renewed by a heartbeat, taken
over at once when its holder is dead) for the whole run, so a second `actstore train` into the
same folder is refused instead of interleaving its metrics and dictionaries with the first's.
A folder that already holds files is refused unless the run resumes its checkpoint or
`--overwrite` asks for a fresh start (then only this trainer's own files are removed).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from actstore import format as fmt
from actstore.location import Location
from actstore.writer import JobLock
from trainer import checkpoint
from trainer.config import TrainConfig

#: What a run writes into its folder (all of it is replaced by --overwrite).
ARTIFACTS = ("metrics.jsonl", "dictionaries", "plots", checkpoint.path("").name,
             "checkpoint.pt")  # the last: an older version's checkpoint file


def prepare(out: Path) -> None:
    """Create `out`, or explain in one line why it cannot be a run folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: pass a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out} cannot be created: {e.strerror}") from None
    probe = out / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out} is not writable: {e.strerror}") from None


def claim(cfg: TrainConfig) -> JobLock:
    """Lock the run folder and make sure it holds nothing another run would mix with."""
    out = Path(cfg.out)
    prepare(out)
    lock = JobLock(Location.from_url(str(out)), f"train-{uuid.uuid4().hex[:8]}",
                   what="run folder")
    lock.acquire()
    try:
        _check_contents(cfg, out)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_contents(cfg: TrainConfig, out: Path) -> None:
    present = sorted(p.name for p in out.iterdir() if p.name != fmt.LOCK)
    has_checkpoint = checkpoint.found(out) is not None
    if cfg.resume:
        if not has_checkpoint:
            checkpoint.load_meta(out, cfg, [])  # raises, saying why
        return
    if not present:
        return
    if not cfg.overwrite:
        what = "a checkpoint: pass --resume to continue it, " if has_checkpoint else \
            f"files of another run ({', '.join(present[:5])}): pass "
        raise ValueError(f"--out {out} holds {what}--overwrite to start over there, or "
                         "another --out")
    for name in ARTIFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            os.unlink(path)
