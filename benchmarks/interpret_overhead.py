"""What `actstore interpret` costs beyond the LM's own time: a scored run (the quickstart's:
2 dictionaries + 4 baselines) interpreted at --latents 50 against an OpenAI-compatible server
on 127.0.0.1 that answers at once (well-formed answers of every kind, log-probs included), so
every second measured is ours. Prints, in one process:

    cold   the first run: corpus (held-out windows, codes, baselines fitted: FastICA
           included), plans, every request sent, results written
    warm   the same command again: every answer from the cache (the <10 s target)
    bare   the same requests POSTed by a plain urllib loop at the same concurrency: the
           reference for the client's per-request overhead (cold requests / bare)

    python -m benchmarks.interpret_overhead --run runs/minilm-topk-… [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from trainer.interpret import prompts
from trainer.interpret.config import InterpretConfig
from trainer.interpret.corpus import load_corpus
from trainer.interpret.pipeline import interpret
from trainer.interpret.results import write_results


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """A well-formed answer to any of interpret's prompts (content is irrelevant here)."""
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


def serve(seen: list[bytes]) -> Iterator[str]:
    """The server, while the generator is suspended; every request body goes to `seen`."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(raw)
            body = json.loads(raw)
            data = json.dumps(answer(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def bare(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Seconds to POST every body with nothing around it."""
    def post(body: bytes) -> None:
        req = urllib.request.Request(url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a training run eval has scored")
    p.add_argument("--report", help="its eval report (default: RUN/report)")
    p.add_argument("--latents", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"  # a copy: interpret rewrites the report's index.html
        shutil.copytree(a.report or Path(a.run) / "report", report)
        seen: list[bytes] = []
        for url in serve(seen):
            cfg = InterpretConfig(run=a.run, llm="bench", out=str(report), endpoint=url,
                                  latents=a.latents, concurrency=a.concurrency)
            times = {}
            for what in ("cold", "warm"):
                t = time.perf_counter()
                result, client = interpret(cfg, progress=False)
                write_results(result, cfg)
                times[what] = time.perf_counter() - t
                print(f"{what}: {times[what]:.2f} s, {client.sent} requests sent, "
                      f"{client.hits} from the cache")
            t = time.perf_counter()
            load_corpus(cfg)
            corpus = time.perf_counter() - t
            bodies = list(seen)  # the cold run's requests, replayed
            reference = bare(url, bodies, a.concurrency)
            m = result.methods
            print(f"methods {len(m)}, latents {sum(s['latents'] for s in m.values())}, "
                  f"requests {len(bodies)}")
            print(f"warm corpus (windows, codes, cached baselines): {corpus:.2f} s")
            print(f"bare loop of {len(bodies)} POSTs: {reference:.2f} s; cold run "
                  f"{times['cold']:.2f} s = {times['cold'] / reference:.2f}x the bare loop")
            print(f"warm run {times['warm']:.2f} s = {times['warm'] / 10:.2f}x the 10 s target")


if __name__ == "__main__":
    main()
