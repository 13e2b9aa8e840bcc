"""A scripted OpenAI-compatible server in this process (stdlib only), for the tests and the
overhead benchmark: POST /v1/chat/completions is answered by a Python function of the
request's JSON, after any scripted faults, and every request answered is recorded.

    with serve(Script(answer)) as url:   # http://127.0.0.1:PORT/v1, until the block ends
        ...                              # script.bodies: the requests answered, in order
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from trainer.interpret import prompts

#: An answer: a chat completion's JSON, or (HTTP status, headers) for an error.
Answer = dict[str, Any] | tuple[int, dict[str, str]]


def well_formed(body: dict[str, Any]) -> dict[str, Any]:
    """A well-formed answer to any of interpret's prompts, whatever they say: an explanation,
    a list of as many labels as windows, or a digit per line with log-probs."""
    system, user = (m["content"] for m in body["messages"])
    logprobs = None
    if system == prompts.EXPLAIN:
        text = "a feature"
    elif body.get("logprobs"):
        n = max(1, len(user.splitlines()))
        text = " ".join(["1"] * n)
        logprobs = {"content": [{"token": "1", "logprob": -0.1, "top_logprobs": [
            {"token": "1", "logprob": -0.1}, {"token": "0", "logprob": -2.3}]}] * n}
    else:
        n = len(re.findall(r"^\d+\. ", user, flags=re.MULTILINE))
        text = "[" + ", ".join(["1", "0"] * n)[:max(1, 3 * n - 2)] + "]"
    return {"choices": [{"message": {"content": text}, "logprobs": logprobs}]}


@dataclass
class Script:
    """What the server does: `faults` are answered first, one per request ((status,
    headers), or a body to send as is); then `answer(body)`."""

    answer: Callable[[dict[str, Any]], Answer] = well_formed
    faults: list[tuple[int, dict[str, str]] | str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    """Every request answered by `answer` with a completion (not the faults, not errors)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self.send(404, b'{"error": "no such route"}')
            with script.lock:
                fault = script.faults.pop(0) if script.faults else None
            if isinstance(fault, tuple):
                return self.send(fault[0], b'{"error": "scripted"}', fault[1])
            if isinstance(fault, str):
                return self.send(200, fault.encode())
            out = script.answer(body)
            if isinstance(out, tuple):
                return self.send(out[0], b'{"error": "scripted"}', out[1])
            with script.lock:
                script.bodies.append(body)
            return self.send(200, json.dumps(out).encode())

        def send(self, status: int, data: bytes, headers: dict[str, str] | None = None
                 ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass  # a line per request would drown the output

    return Handler


@contextmanager
def serve(script: Script) -> Iterator[str]:
    """The server, on a free port of 127.0.0.1, while the block runs; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
