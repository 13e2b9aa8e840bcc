"""The /proc helpers and the watcher `Reaper` starts (actstore.store.processes), which must
run as an isolated script: standard library only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from actstore.store import processes

SCRIPT = Path(processes.__file__)


def test_the_watcher_imports_the_standard_library_only() -> None:
    tree = ast.parse(SCRIPT.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert names - {"__future__"} <= set(sys.stdlib_module_names), names


def test_the_watcher_runs_isolated_and_stands_down_on_done() -> None:
    """`python -I processes.py PID` (what Reaper starts): told "done", it exits at once and
    leaves the driver's processes alone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watcher = subprocess.run([sys.executable, "-I", str(SCRIPT), str(os.getpid())],
                                 input=b"done\n", capture_output=True, timeout=30, check=False)
        assert watcher.returncode == 0, watcher.stderr.decode()[-2000:]
        assert child.poll() is None
        assert processes.alive(child.pid)
        assert child.pid in processes.descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not processes.alive(child.pid)


def test_start_time_tells_a_live_process_from_a_gone_one() -> None:
    assert processes.start_time(os.getpid()) is not None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert processes.start_time(gone.pid) is None
