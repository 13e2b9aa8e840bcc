"""Processes that must not outlive their driver: a local Ray started by `actstore generate`,
and the workers it runs.

A driver killed outright (SIGKILL, OOM killer) runs no cleanup, and the Ray it started keeps
running with its workers, which go on computing and committing shards for a job that is gone.
`Reaper` starts a small watcher process that holds the read end of a pipe from the driver and
keeps a list of the driver's descendants, refreshed every second. When the pipe closes
without a "done" line (the driver died), it terminates that list: Ray's processes and the
workers under them.

    python -I actstore/reaper.py DRIVER_PID      # started by Reaper, not by hand
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ..., starttime at
    index 19), or None when there is no such process or no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> set[int]:
    """Every live process under `pid` (from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def terminate(pids: set[int], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            if not any(_alive(p) for p in pids):
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = proc_stat(pid)
    return fields is None or fields[0] != "Z"  # a zombie is dead for our purpose


class Reaper:
    """Started by the driver after it started Ray; `close()` on a normal exit."""

    def __init__(self) -> None:
        # This file run as a script in isolated mode: the watcher imports the standard library
        # only (not the package, whose torch import would cost seconds of CPU at start-up).
        self._proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE, start_new_session=True)  # not in the driver's group

    def close(self) -> None:
        """The driver is exiting normally (it shuts Ray down itself): stand down."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.write(b"done\n")
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)


def _watch(driver: int) -> None:
    me = os.getpid()
    known: set[int] = set()
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], 1.0)
        if ready:
            line = stdin.readline()
            if line.strip() == b"done":
                return
            if not line:  # EOF without "done": the driver is gone
                break
        known = (known | descendants(driver)) - {me}
        known = {p for p in known if _alive(p)}
    terminate({p for p in known if _alive(p)})


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
