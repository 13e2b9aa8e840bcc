"""The run folder (`--out`): one run at a time, never mixed with another run's files.

Rank 0 takes the folder's lock (the store's `JobLock`: a lease renewed by a heartbeat, taken
over at once when its holder is dead) for the whole run, so a second `actstore train` into the
same folder is refused instead of interleaving its metrics and dictionaries with the first's.
A folder that already holds files is refused unless the run resumes its checkpoint or
`--overwrite` asks for a fresh start (then only this trainer's own files are removed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from actstore.store import format as fmt
from actstore.store.errors import NO_SPACE_ERRNOS, StoreFullError
from actstore.store.location import Location
from actstore.store.lock import JobLock
from trainer.training import checkpoint
from trainer.training.config import TrainConfig

#: What a run writes into its folder (all of it is replaced by --overwrite).
DONE = ".finished"
"""Written after every dictionary, export and plot of a run: a run whose last checkpoint is
final but which lacks it (the disk filled while they were written) resumes to write them."""
ARTIFACTS = ("metrics.jsonl", "dictionaries", "plots", checkpoint.path("").name, DONE,
             "checkpoint.pt")  # the last: an older version's checkpoint file


def finished(out: str | Path) -> bool:
    return (Path(out) / DONE).exists()


def mark_finished(out: str | Path) -> None:
    (Path(out) / DONE).write_text("")


@contextlib.contextmanager
def out_of_space(out: str | Path) -> Iterator[None]:
    """A full disk (or quota) while the run folder is written: one error that says what
    survives and how to go on, instead of a traceback from deep inside a writer."""
    try:
        yield
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is one
        if isinstance(e, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        what = no_space(e, out)
        if what is None:
            raise
        kept = checkpoint.found(out)
        then = (f"its last checkpoint ({kept}) is intact: free space and rerun with --resume"
                if kept is not None else "nothing was checkpointed yet: free space and rerun with "
                "--overwrite")
        raise StoreFullError(errno.ENOSPC, f"--out {out}: no space left on the device ({what}); "
                             f"{then}") from e


_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28")
LOW_SPACE = 1 << 20
"""Free bytes below which a failed write is taken for a full disk: torch.save's zip writer and
safetensors report one without its errno ("unexpected pos 704 vs 598")."""


def no_space(e: BaseException, out: str | Path) -> str | None:
    """What failed for lack of space behind `e` (its errno, found also inside
    torch.distributed.checkpoint's per-rank `failures` or a chained exception, or its text),
    or — when none says so — a folder left with under LOW_SPACE free; else None."""
    found = _errno_or_text(e, 0)
    if found is not None:
        return found
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return None
    return f"{type(e).__name__} with {free} bytes free" if free < LOW_SPACE else None


def _errno_or_text(e: BaseException, depth: int) -> str | None:
    if depth > 8:
        return None
    if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
        return str(e.filename or e.strerror)
    if any(t in str(e) for t in _FULL_TEXT):
        return f"{type(e).__name__}: {str(e)[:200]}"
    failures = getattr(e, "failures", None)
    inner = list(failures.values()) if isinstance(failures, dict) else []
    for nested in [*inner, e.__cause__, e.__context__]:
        if isinstance(nested, BaseException) and (found := _errno_or_text(nested, depth + 1)):
            return found
    return None


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
