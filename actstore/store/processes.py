"""This host's processes, read from /proc: alive, started when, and under whom. Standard library
only: `python -I processes.py DRIVER_PID` is the watcher `Reaper` starts (importing the package
would cost seconds of CPU at start-up for torch's sake).

A driver killed outright (SIGKILL, OOM killer) runs no cleanup, and the Ray it started keeps
running with its workers, which go on computing and committing shards for a job that is gone.
The watcher holds the read end of a pipe from the driver and keeps a list of the driver's
descendants, refreshed every second. When the pipe closes without a "done" line (the driver
died), it terminates that list: Ray's processes and the workers under them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
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
            if not any(alive(p) for p in pids):
                return
            time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = proc_stat(pid)
    return fields is None or fields[0] != "Z"  # a zombie is dead for our purpose


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux), or None if there is no such
    process. A pid that was reused by another process has another start time."""
    fields = proc_stat(pid)
    if fields is not None:
        return int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return -1  # alive, another user's
    return -1  # alive; its start time is unknown here



def watch(driver: int) -> None:
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
        known = {p for p in known if alive(p)}
    terminate({p for p in known if alive(p)})


if __name__ == "__main__":
    watch(int(sys.argv[1]))
