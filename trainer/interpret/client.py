"""Requests in bulk, at a bounded cost:

    requests ──cache hit?──▶ the stored reply (free; a rerun or a resumed run repeats no call)
             ──budget left?──▶ backend.send, `concurrency` at a time ──▶ appended to the cache
             ──else──▶ None (not sent: said at the end, a rerun continues)

The cache is one JSON-lines file, a line per answered request, keyed by a hash of the model's
name and the whole request body, appended and flushed as each reply arrives: a run killed at
any point keeps every answer it got (a torn last line is ignored on reading).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO

from tqdm import tqdm

from trainer.interpret.llm import Backend, Reply, Request


def request_key(model: str, request: Request) -> str:
    """The cache key: everything that decides the answer."""
    text = json.dumps(request.body(model), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def read_cache(path: Path) -> dict[str, Reply]:
    """The replies cached at `path` (none when it does not exist)."""
    found: dict[str, Reply] = {}
    if not path.exists():
        return found
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                found[entry["key"]] = Reply.from_json(entry["reply"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
    return found


class Client:
    """A backend behind the cache and the budget."""

    def __init__(self, backend: Backend, cache: Path, max_requests: int | None = None,
                 progress: bool = True) -> None:
        self.backend, self.path = backend, cache
        self.cache = read_cache(cache)
        self.budget = max_requests
        self.sent = self.hits = self.unsent = 0
        self.progress = progress
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def ask_all(self, requests: Sequence[Request], what: str) -> list[Reply | None]:
        """Replies in order; None where the budget ran out before it was sent. The first
        EndpointError stops the batch (requests not yet started are not sent) and is raised
        once the calls in flight have ended (their answers cached)."""
        keys = [request_key(self.backend.name, r) for r in requests]
        replies: list[Reply | None] = [self.cache.get(k) for k in keys]
        self.hits += len({k for k, r in zip(keys, replies, strict=True) if r is not None})
        todo = list(dict.fromkeys(k for k, r in zip(keys, replies, strict=True) if r is None))
        if self.budget is not None:
            left = max(0, self.budget - self.sent)
            self.unsent += len(todo[left:])
            todo = todo[:left]
        first = dict(zip(keys, requests, strict=True))
        bar = tqdm(total=len(todo), desc=what, unit="req", file=sys.stderr,
                   disable=not self.progress or not todo)
        with ThreadPoolExecutor(max(1, self.backend.concurrency)) as pool:
            futures = [pool.submit(self._one, k, first[k], bar) for k in todo]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
        bar.close()
        for f in futures:
            if not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        return [self.cache.get(k) for k in keys]

    def _one(self, key: str, request: Request, bar: tqdm) -> None:
        reply = self.backend.send(request)
        line = json.dumps({"key": key, "reply": reply.to_json()}, ensure_ascii=False)
        with self._lock:
            self.sent += 1
            self.cache[key] = reply
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                torn = self.path.exists() and self.path.stat().st_size > 0 and \
                    self.path.read_bytes()[-1:] != b"\n"
                self._file = self.path.open("a", encoding="utf-8")
                if torn:  # a line cut short by a kill stays one bad line, not two
                    self._file.write("\n")
            self._file.write(line + "\n")
            self._file.flush()
            bar.update(1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
