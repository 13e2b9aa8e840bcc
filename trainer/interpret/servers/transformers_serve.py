"""`transformers serve` (the OpenAI-compatible server that ships with transformers, its
`serving` extra installed) running a local model on 127.0.0.1, started and stopped around a
block, for the end-to-end tests:

    with transformers_serve("path/to/model", log=Path("serve.log")) as server:
        ...                  # anything else while it starts
        url = server.ready() # http://127.0.0.1:PORT/v1; requests name the model by its path

The start has a deadline: until GET /health answers, the server process is watched, and an
exit or the deadline is one error quoting the end of its log. Offline (HF_HUB_OFFLINE=1): the
model is a folder, nothing is downloaded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: `transformers serve` as this interpreter's transformers installs it (no PATH lookup).
_CLI = ("import sys; from transformers.cli.transformers import main; "
        "sys.argv[0] = 'transformers'; sys.exit(main())")


def free_port() -> int:
    """A port of 127.0.0.1 free now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(lines[-5:]) or "(no output)"


class Server:
    """A `transformers serve` process starting; `ready()` waits for it."""

    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path,
                 deadline: float) -> None:
        self.proc, self.base, self.log = proc, base, log
        self.end = time.monotonic() + deadline
        self.deadline = deadline

    def ready(self) -> str:
        """The base URL (…/v1) once GET /health answers; RuntimeError when the process exits
        first or the deadline passes (quoting the end of its log)."""
        while not _healthy(self.base):
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({self.proc.returncode}) "
                                   f"before answering: {_tail(self.log)}")
            if time.monotonic() > self.end:
                raise RuntimeError(f"transformers serve not healthy after {self.deadline:g} "
                                   f"s: {_tail(self.log)}")
            time.sleep(0.25)
        return self.base + "/v1"


@contextmanager
def transformers_serve(model: str, *, log: Path, deadline: float = 300.0,
                       extra: tuple[str, ...] = ()) -> Iterator[Server]:
    """The server for `model` started (not yet waited for: `Server.ready()`), stopped when
    the block ends (see the module's docstring)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CLI, "serve", model, "--host", "127.0.0.1", "--port",
             str(port), "--device", "cpu", "--log-level", "warning", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield Server(proc, f"http://127.0.0.1:{port}", log, deadline)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
