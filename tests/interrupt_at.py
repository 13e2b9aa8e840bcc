"""`python -m tests.interrupt_at POINT N actstore-args...`: run `actstore` in this process and
press Ctrl-C (send this process SIGINT) at the N-th time it reaches a named point, so that a
test interrupts a real command at an exact moment instead of after a guessed delay.

    step               before a training step
    checkpoint-written after DCP wrote a checkpoint's files, before it is swapped in
    checkpoint-swap    mid-swap: the last checkpoint moved aside, the new one not yet in place
    torch-save         inside torch.save while DCP writes a checkpoint (mid-file)
    dictionaries       while the final dictionaries are written (after the first one)
    report             while eval writes its report (before the frontier plot)
    shard              while toy writes a shard (its data written, not yet committed); toy's
                       shards are made small (1,024 rows of d=8), N = 0 only does that

The signal goes through the real handler: Python raises KeyboardInterrupt at the next
bytecode of the main thread, wherever that is, exactly as a terminal's Ctrl-C does.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _patch(owner: Any, name: str, value: Any) -> None:
    """Replace `owner.name` for the rest of this process (it runs one command, then exits)."""
    setattr(owner, name, value)


def _ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


def _nth(n: int, fn: Callable[..., Any], *, after: bool = False) -> Callable[..., Any]:
    """`fn`, pressing Ctrl-C before (or after) its n-th call."""
    calls = {"n": 0}

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n and not after:
            _ctrl_c()
        out = fn(*args, **kwargs)
        if calls["n"] == n and after:
            _ctrl_c()
        return out
    return wrapped


class _File:
    """A file whose second write presses Ctrl-C once the bytes are written: the interrupt then
    lands inside torch.save's zip writer, which called it, mid-file (it then fails with
    "unexpected pos")."""

    def __init__(self, f: Any) -> None:
        self._f, self._writes = f, 0

    def write(self, data: Any) -> Any:
        written = self._f.write(data)
        self._writes += 1
        if self._writes == 2:
            _ctrl_c()
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _patch_torch_save(n: int) -> None:
    """The n-th checkpoint's first torch.save (DCP's writer's) is interrupted mid-file."""
    import torch

    from trainer.training import checkpoint

    real_save, real_dcp_save = torch.save, vars(checkpoint)["dcp_save"]
    state = {"checkpoints": 0, "armed": False}

    def dcp_save(*args: Any, **kwargs: Any) -> Any:
        state["checkpoints"] += 1
        state["armed"] = state["checkpoints"] == n
        return real_dcp_save(*args, **kwargs)

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        armed, state["armed"] = state["armed"], False
        real_save(obj, _File(f) if armed else f, *args, **kwargs)
    _patch(checkpoint, "dcp_save", dcp_save)
    _patch(torch, "save", save)  # what DCP's writer calls


def _patch_replace(n: int) -> None:
    from trainer.training import checkpoint

    real, calls = os.replace, {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        real(src, dst)
        if str(dst).endswith(".checkpoint.previous"):
            calls["n"] += 1
            if calls["n"] == n:
                _ctrl_c()
    own_os = type(sys)("os_in_checkpoint")  # the checkpoint module's os alone
    own_os.__dict__.update(os.__dict__, replace=replace)
    _patch(checkpoint, "os", own_os)


class _SmallShards:
    """`Layout` with shards of 1,024 float32 rows of 8 (32 KiB) instead of ~256 MiB."""

    @staticmethod
    def for_sizes(*args: Any, **kwargs: Any) -> Any:
        from actstore.store.spec import Layout
        return Layout.for_sizes(*args, **kwargs, shard_bytes=32 << 10, chunk_bytes=16 << 10)


def install(point: str, n: int) -> None:
    """Arm `point` for its n-th time."""
    if point == "step":
        from trainer.training import ensemble
        _patch(ensemble.Ensemble, "step", _nth(n, ensemble.Ensemble.step))
    elif point == "checkpoint-written":
        from trainer.training import checkpoint
        _patch(checkpoint, "dcp_save", _nth(n, vars(checkpoint)["dcp_save"], after=True))
    elif point == "checkpoint-swap":
        _patch_replace(n)
    elif point == "torch-save":
        _patch_torch_save(n)
    elif point == "dictionaries":
        from trainer.training import run_dir
        _patch(run_dir, "export_saelens", _nth(n, vars(run_dir)["export_saelens"]))
    elif point == "report":
        from trainer.evaluation.report import writer
        _patch(writer, "plot_frontier", _nth(n, writer.plot_frontier))
    elif point == "shard":  # with small shards, so that a small toy store has several
        from actstore.generate import toy
        from actstore.store.writer import ShardWriter
        _patch(toy, "Layout", _SmallShards)
        _patch(ShardWriter, "commit", _nth(n, ShardWriter.commit))
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    from actstore.shell.main import main

    # A process started in the background of a shell without job control (`nohup cmd &`, some
    # CI runners) inherits SIGINT ignored, and Python then installs no handler: restore the
    # one a terminal's Ctrl-C meets.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
