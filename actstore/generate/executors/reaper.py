"""Processes that must not outlive their driver: a local Ray started by `actstore generate`,
and the workers it runs. `Reaper` starts the watcher of `actstore.store.processes` (see there
for how it works) and stands it down on a normal exit."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from actstore.store import processes


class Reaper:
    """Started by the driver after it started Ray; `close()` on a normal exit."""

    def __init__(self) -> None:
        # The watcher runs as a script in isolated mode: it imports the standard library only.
        self._proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(processes.__file__), str(os.getpid())],
            stdin=subprocess.PIPE, start_new_session=True)  # not in the driver's group

    def close(self) -> None:
        """The driver is exiting normally (it shuts Ray down itself): stand down."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.write(b"done\n")
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
