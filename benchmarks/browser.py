"""What the report's feature browser costs: the quantile sample in eval's pass, writing every
latent's shard, the bytes on disk, and the time a headless Chromium takes to open a latent's
page from disk. Prints, in one process:

    pass      TopCollector over a TopK encoder's codes (--rows rows, k 32) without and with the
              quantile sample (12 firings per latent), interleaved rounds, medians; the
              encoder's matmul + top-k alone as the reference for the pass
    write     the browser of a synthetic report of --latents latents (written by the report's
              writer: tests/trainer/evaluation/synthetic.py): seconds and bytes
    open      Chromium --dump-dom of a latent's page and of a token search: the time the page
              itself says its first view took (performance.now() when done, ms since
              navigation began), against the same for a report of 600 latents (one shard
              and a few buckets, the reference); and the whole command's wall time against
              a blank page's (the browser's own start); interleaved, medians

    python -m benchmarks.browser [--latents 16391] [--rows 65536] [--rounds 5]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.trainer.evaluation.synthetic import NAME, synthetic_report
from trainer.dictionary.kernels import Selection, from_sorted
from trainer.evaluation.examples import TopCollector
from trainer.evaluation.report import write_report
from trainer.evaluation.report.browser.shards import SHARD

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"


def codes(rows: int, latents: int, k: int = 32, d: int = 64) -> tuple[list[Selection], float]:
    """TopK codes of random rows, batch by batch, and the seconds encoding took."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(d, latents, generator=gen) / d ** 0.5
    out, start = [], time.perf_counter()
    for lo in range(0, rows, 4096):
        x = torch.randn(min(4096, rows - lo), d, generator=gen)
        top = (x @ w).topk(k, dim=1)
        r = torch.arange(len(x)).repeat_interleave(k)
        out.append(from_sorted(r, top.indices.reshape(-1), top.values.reshape(-1).abs(),
                               len(x)))
    return out, time.perf_counter() - start


def collect(batches: list[Selection], latents: int, sample: int) -> float:
    start = time.perf_counter()
    c = TopCollector(latents, 16, sample=sample)
    for i, s in enumerate(batches):
        c.add(s, torch.arange(len(s.offsets)) + 4096 * i)
    c.result()
    return time.perf_counter() - start


def chromium(url: str) -> tuple[float, float]:
    """(the command's wall seconds, the page's own ms to its first view, NaN: none)."""
    start = time.perf_counter()
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--dump-dom", url], capture_output=True, check=True, timeout=300,
                          text=True)
    wall = time.perf_counter() - start
    found = re.search(r'data-open-ms="(\d+)"', done.stdout)
    return wall, float(found.group(1)) if found else float("nan")


def medians(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, Any]:
    """Each run's median over interleaved rounds (element-wise for tuples)."""
    seen: dict[str, list[Any]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            seen[k].append(fn())
    return {k: tuple(statistics.median(x) for x in zip(*v, strict=True))
            if isinstance(v[0], tuple) else statistics.median(v) for k, v in seen.items()}


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latents", type=int, default=16_391)
    p.add_argument("--rows", type=int, default=1 << 16)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")

    batches, encode = codes(a.rows, a.latents)
    pass_ = medians({"top": lambda: collect(batches, a.latents, 0),
                     "top+sample": lambda: collect(batches, a.latents, 12)}, a.rounds)
    extra = pass_["top+sample"] - pass_["top"]
    print(f"pass over {a.rows} rows, {a.latents} latents, k 32: collector {pass_['top']:.3f} s, "
          f"with the sample {pass_['top+sample']:.3f} s (x{pass_['top+sample'] / pass_['top']:.2f}"
          f"); the extra {extra:.3f} s is x{extra / encode:.2f} of the encoder alone "
          f"({encode:.3f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        ev, cfg, store, special = synthetic_report(report, a.latents)
        start = time.perf_counter()
        write_report(ev, store, cfg)
        wrote = time.perf_counter() - start
        latents = report / "latents"
        last = a.latents // 2  # in a full shard
        shard = latents / "d0" / f"{last // SHARD}.js"
        opened = [report / "index.html", latents / "index.js", shard]
        buckets = list((latents / "tokens").glob("*.js"))
        print(f"write: {a.latents} latents in {wrote:.1f} s; on disk {size(report) / 2**20:.1f} "
              f"MiB (shards {size(latents / 'd0') / 2**20:.1f} MiB, token index "
              f"{size(latents / 'tokens') / 2**20:.1f} MiB in {len(buckets)} buckets)")
        print(f"a latent's page loads {sum(f.stat().st_size for f in opened) / 2**10:.0f} KiB "
              f"(index.html {opened[0].stat().st_size / 2**10:.0f}, index.js "
              f"{opened[1].stat().st_size / 2**10:.0f}, its shard "
              f"{shard.stat().st_size / 2**10:.0f}); a token search + one bucket "
              f"({max(b.stat().st_size for b in buckets) / 2**10:.0f} KiB at most)")
        blank = Path(tmp) / "blank.html"
        blank.write_text("<!doctype html><p>blank</p>")
        small = Path(tmp) / "small"
        sev, scfg, sstore, _ = synthetic_report(small, 600)
        write_report(sev, sstore, scfg)
        url, surl = (report / "index.html").as_uri(), (small / "index.html").as_uri()
        opens = medians({
            "blank": lambda: chromium(blank.as_uri()),
            "latent": lambda: chromium(f"{url}#dict={NAME}&latent={last}"),
            "small": lambda: chromium(f"{surl}#dict={NAME}&latent=300"),
            "search": lambda: chromium(f"{url}#search=%23{special}"),
            "small search": lambda: chromium(f"{surl}#search=%23{special}")}, a.rounds)
        page_ms, small_ms = opens["latent"][1], opens["small"][1]
        search_ms, small_search_ms = opens["search"][1], opens["small search"][1]
        print(f"open (Chromium --dump-dom, median of {a.rounds}): latent {last}'s page "
              f"{page_ms:.0f} ms in the page (x{page_ms / small_ms:.2f} of a 600-latent "
              f"report's, {small_ms:.0f} ms); a token search {search_ms:.0f} ms "
              f"(x{search_ms / small_search_ms:.2f}"
              f"); the whole command {opens['latent'][0]:.2f} s against a blank page's "
              f"{opens['blank'][0]:.2f} s (x{opens['latent'][0] / opens['blank'][0]:.2f})")


if __name__ == "__main__":
    main()
