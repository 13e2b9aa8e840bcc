"""Talking to a language model: the request and reply every backend shares, and the
OpenAI-compatible HTTP backend (stdlib only: vLLM, llama.cpp's server, `transformers serve`,
hosted APIs all speak /chat/completions).

    Request ──body()──▶ POST {endpoint}/chat/completions ──▶ Reply(text, per-token log-probs)
    transient failures (timeouts, refused or reset connections, 5xx, 429) are retried with
    exponential backoff and jitter until a deadline; anything else, or the deadline, is an
    `EndpointError` (one line, the cache keeps what was answered)
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: The longest wait between two tries, whatever the backoff reached.
MAX_WAIT = 30.0
#: Alternatives asked for at each generated token when log-probs are wanted.
TOP_LOGPROBS = 10


class EndpointError(ConnectionError):
    """The model cannot answer: a refused request, or transient failures past the deadline."""


class TransientError(Exception):
    """A failure a later try may get past; `wait` is the server's Retry-After, if any."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


@dataclass(frozen=True)
class Request:
    """One chat completion, greedy (temperature 0), so that its answer can be cached."""

    system: str
    user: str
    max_tokens: int
    logprobs: bool = False
    """Ask for each generated token's log-prob and its top alternatives."""

    def body(self, model: str) -> dict[str, Any]:
        """The OpenAI chat-completions JSON (also the cache's key, with the model)."""
        body: dict[str, Any] = {
            "model": model, "temperature": 0, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": self.system},
                         {"role": "user", "content": self.user}]}
        if self.logprobs:
            body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return body


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token, its log-prob and the top alternatives' (token text → log-prob)."""

    token: str
    logprob: float
    top: dict[str, float]


@dataclass(frozen=True)
class Reply:
    text: str
    logprobs: list[TokenLogprobs] | None = None
    """None when the backend returned none."""

    def to_json(self) -> dict[str, Any]:
        lp = None if self.logprobs is None else [[t.token, t.logprob, t.top]
                                                  for t in self.logprobs]
        return {"text": self.text, "logprobs": lp}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Reply:
        lp = data.get("logprobs")
        return Reply(str(data["text"]), None if lp is None else
                     [TokenLogprobs(str(t), float(p), dict(top)) for t, p, top in lp])


class Backend(Protocol):
    """What answers requests."""

    name: str
    """The model, as it goes into the cache's key."""
    concurrency: int
    """Requests it takes at once."""

    def send(self, request: Request) -> Reply:
        """The reply (after any retries), or EndpointError."""


def parse_completion(data: Any) -> Reply:
    """The first choice of a chat-completions response (raises on another shape)."""
    choice = data["choices"][0]
    text = choice["message"].get("content") or ""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return Reply(str(text))
    return Reply(str(text), [TokenLogprobs(str(t["token"]), float(t["logprob"]),
                                           {str(a["token"]): float(a["logprob"])
                                            for a in t.get("top_logprobs") or []})
                             for t in content])


def retrying(call: Callable[[], Reply], deadline: float, backoff: float,
             what: str, sleep: Callable[[float], None] = time.sleep) -> Reply:
    """`call()` until it returns, retrying TransientError with exponential backoff (jitter,
    capped at MAX_WAIT, at least a Retry-After) for up to `deadline` seconds."""
    start, tries = time.monotonic(), 0
    while True:
        try:
            return call()
        except TransientError as e:
            tries += 1
            wait = min(MAX_WAIT, backoff * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)
            wait = max(wait, min(e.wait or 0.0, MAX_WAIT))
            if time.monotonic() - start + wait > deadline:
                raise EndpointError(f"{what} still failing after {tries} tries in "
                                    f"{time.monotonic() - start:.0f} s (--retry-deadline "
                                    f"{deadline:g}): {e}") from e
            sleep(wait)


class HttpBackend:
    """An OpenAI-compatible server (`--endpoint URL --llm NAME`)."""

    def __init__(self, endpoint: str, model: str, *, key_env: str, timeout: float,
                 deadline: float, backoff: float, concurrency: int) -> None:
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.name, self.concurrency = model, concurrency
        self.key = os.environ.get(key_env) or None
        self.timeout, self.deadline, self.backoff = timeout, deadline, backoff

    def send(self, request: Request) -> Reply:
        body = json.dumps(request.body(self.name)).encode()
        return retrying(lambda: self._post(body), self.deadline, self.backoff, self.url)

    def _post(self, body: bytes) -> Reply:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode(errors="replace").strip()
            if e.code in (408, 429) or e.code >= 500:
                after = e.headers.get("Retry-After")
                wait = float(after) if after and after.replace(".", "", 1).isdigit() else None
                raise TransientError(f"HTTP {e.code}: {detail}", wait) from e
            raise EndpointError(f"{self.url} refused the request: HTTP {e.code}: {detail}"
                                ) from e
        except (urllib.error.URLError, TimeoutError, ConnectionError,
                http.client.HTTPException) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from e
        try:
            return parse_completion(json.loads(raw))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            # a proxy's error page or a truncated body: the server may answer next time
            raise TransientError(f"not a chat completion: {raw[:120]!r}") from e
