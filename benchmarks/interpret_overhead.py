"""What `actstore interpret` costs beyond the LM's own time: a scored run (the quickstart's:
2 dictionaries + 4 baselines) interpreted at --latents 50 against an OpenAI-compatible server
on 127.0.0.1 that answers at once (well-formed answers of every kind, log-probs included), so
every second measured is ours. Prints, in one process:

    cold   the first run: corpus (held-out windows, codes, baselines fitted: FastICA
           included), plans, every request sent, results written
    warm   the same command again: every answer from the cache (the <10 s target)
    cli    the same command as an `actstore interpret` process of its own (imports and all)
    bare   the same requests POSTed by a plain urllib loop at the same concurrency: the
           reference for the client's per-request overhead (cold requests / bare)

    python -m benchmarks.interpret_overhead --run runs/minilm-topk-… [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.interpret.config import InterpretConfig
from trainer.interpret.corpus import load_corpus
from trainer.interpret.pipeline import interpret
from trainer.interpret.results import write_results
from trainer.interpret.servers.scripted import Script, serve


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
    p.add_argument("--warm", type=int, default=1, help="warm runs (their median is reported)")
    p.add_argument("--out", help="keep interpret's output (a copy of the report) here between "
                   "invocations: its cache makes even the first run warm (default: a "
                   "temporary folder)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(a.out or Path(tmp) / "report")  # a copy: interpret rewrites index.html
        if not (report / "eval.json").exists():
            shutil.copytree(a.report or Path(a.run) / "report", report, dirs_exist_ok=True)
        measure(a, report)


def measure(a: argparse.Namespace, report: Path) -> None:
    script = Script()  # well-formed answers of every kind, at once
    with serve(script) as url:
        cfg = InterpretConfig(run=a.run, llm="bench", out=str(report), endpoint=url,
                              latents=a.latents, concurrency=a.concurrency)
        times: dict[str, list[float]] = {"cold": [], "warm": []}
        for what in ["cold"] + ["warm"] * a.warm:
            t = time.perf_counter()
            result, client = interpret(cfg, progress=False)
            write_results(result, cfg)
            times[what].append(time.perf_counter() - t)
            print(f"{what}: {times[what][-1]:.2f} s, {client.sent} requests sent, "
                  f"{client.hits} from the cache; load average {_load()}", flush=True)
        t = time.perf_counter()
        load_corpus(cfg)
        corpus = time.perf_counter() - t
        bodies = [json.dumps(b).encode() for b in script.bodies]  # the cold run's, replayed
        m = result.methods
        print(f"methods {len(m)}, latents {sum(s['latents'] for s in m.values())}, "
              f"requests {client.hits}")
        print(f"warm corpus (windows, codes, cached baselines): {corpus:.2f} s")
        cold = times["cold"][0]
        if bodies:  # none when --out kept a warm cache
            reference = bare(url, bodies, a.concurrency)
            print(f"bare loop of {len(bodies)} POSTs: {reference:.2f} s; cold run "
                  f"{cold:.2f} s = {cold / reference:.2f}x the bare loop")
        warm = statistics.median(times["warm"])
        print(f"warm run (median of {a.warm}) {warm:.2f} s = {warm / 10:.2f}x the 10 s target")
        cli = command_line(a, report, url)
        print(f"warm `actstore interpret` process (imports, tokenizer load and all) {cli:.2f} s "
              f"= {cli / 10:.2f}x the 10 s target, {cli / warm:.2f}x the warm run; load "
              f"average {_load()}")


def command_line(a: argparse.Namespace, report: Path, url: str) -> float:
    """Seconds of the same command as a process of its own, every answer cached."""
    code = ("import sys; from actstore.shell.main import main; sys.argv[0] = 'actstore'; "
            "sys.exit(main())")
    argv = ["interpret", "--run", a.run, "--out", str(report), "--llm", "bench",
            "--endpoint", url, "--latents", str(a.latents), "--concurrency", str(a.concurrency)]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv], check=True, capture_output=True,
                   timeout=600)
    return time.perf_counter() - t


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
