"""What the report's feature browser costs: the quantile sample in eval's pass, writing every
latent's shard, the bytes on disk, and the time a headless Chromium takes to open a latent's
page from disk. Prints, in one process:

    pass      TopCollector over a TopK encoder's codes (--rows rows, k 32) without and with the
              quantile sample (12 firings per latent), interleaved rounds, medians; the
              encoder's matmul + top-k alone as the reference for the pass
    write     the browser of a synthetic report of --latents latents (written by the report's
              writer: tests/trainer/evaluation/synthetic.py): seconds and bytes
    open      Chromium --dump-dom of a latent's page, of a token search, and of a
              blank page (the browser's own start, the reference), interleaved, medians

    python -m benchmarks.browser [--latents 16391] [--rows 65536] [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def chromium(url: str) -> float:
    start = time.perf_counter()
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                   capture_output=True, check=True, timeout=300)
    return time.perf_counter() - start


def medians(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    seen: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            seen[k].append(fn())
    return {k: statistics.median(v) for k, v in seen.items()}


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
        url = (report / "index.html").as_uri()
        opens = medians({"blank": lambda: chromium(blank.as_uri()),
                         "latent": lambda: chromium(f"{url}#dict={NAME}&latent={last}"),
                         "search": lambda: chromium(f"{url}#search=%23{special}")}, a.rounds)
        assert special  # the token only the last latent's top examples fire on
        print(f"open (Chromium --dump-dom, median of {a.rounds}): blank page "
              f"{opens['blank']:.2f} s; latent {last}'s page {opens['latent']:.2f} s "
              f"(x{opens['latent'] / opens['blank']:.2f} of blank, +"
              f"{opens['latent'] - opens['blank']:.2f} s); token search {opens['search']:.2f} s "
              f"(x{opens['search'] / opens['blank']:.2f})")


if __name__ == "__main__":
    main()
