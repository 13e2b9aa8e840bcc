"""What `--log tensorboard,wandb` costs a training run: the same run (a TopK dictionary on a toy
store, the default `--log-every`) without trackers, with TensorBoard, with W&B (offline) and with
both, in one process, alternating the order over rounds. Two measures, each a ratio to the run
without trackers (medians over rounds):

- the time spent inside the trackers, timed around every call the run makes to them (each
  metric line, the end), as a share of that same run's time: 1 − share is the tokens/s ratio
  logging leaves, measured within one run, so it holds on a machine shared with other work;
  the trackers' start (W&B's `init`) and finish are given apart, in seconds (once per run);
- the CPU seconds the trackers' own processes spent meanwhile (W&B's `wandb-core` service
  writes the offline run), as a share of the same loop time: on a machine with no spare core
  that is what they can take from training, at most;
- tokens/s of each run against the run without trackers (A/B: on a busy machine this ratio
  carries that machine's noise, several percent here), over the whole run and over its
  training loop (the run's seconds less the trackers' start and finish, which a run pays once
  whatever its length: a background process W&B keeps busy during the loop still counts).

    python -m benchmarks.trackers_overhead [--rounds 3] [--tokens 1228800]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from actstore.generate.toy import HOOK, ToyConfig, make_toy_store
from trainer.tracking import trackers
from trainer.training.config import TrainConfig
from trainer.training.train import train

SETUPS: dict[str, tuple[str, ...]] = {"none": (), "tensorboard": ("tensorboard",),
                                      "wandb": ("wandb",), "both": ("tensorboard", "wandb")}


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's live descendants (Linux)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    todo, seen = [os.getpid()], set()
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split() if int(c) not in seen]
            except OSError:
                continue  # it ended meanwhile
        if pid != os.getpid() and pid not in seen:
            seen.add(pid)
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


class Timed:
    """A tracker whose calls are timed (seconds summed in `clock`: "calls", "finish"; and
    its processes' CPU seconds from its start to its close in "background")."""

    def __init__(self, inner: trackers.Tracker, clock: dict[str, float]) -> None:
        self.inner, self.clock = inner, clock
        self.cpu_at_start = children_cpu()

    def _timed(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        start = time.perf_counter()
        fn(*args)
        self.clock[key] += time.perf_counter() - start

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._timed("calls", self.inner.scalars, step, values)

    def images(self, step: int, paths: Sequence[Path]) -> None:
        self._timed("calls", self.inner.images, step, paths)

    def evaluation(self, step: int, values: dict[str, float],
                   tables: dict[str, trackers.Table], report: Path) -> None:
        self._timed("calls", self.inner.evaluation, step, values, tables, report)

    def close(self) -> None:
        self.clock["background"] += children_cpu() - self.cpu_at_start
        self._timed("finish", self.inner.close)


def timing(clock: dict[str, float]) -> Callable[..., list[trackers.Tracker]]:
    """`open_trackers` with its opening timed into clock["start"] and its trackers wrapped."""
    real = trackers.open_trackers

    def opened(*args: Any, **kwargs: Any) -> list[trackers.Tracker]:
        start = time.perf_counter()
        made = real(*args, **kwargs)
        clock["start"] += time.perf_counter() - start
        return [Timed(t, clock) for t in made]
    return opened


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=300 * 4096, help="300 steps of 4096 rows")
    a = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    real = trackers.open_trackers
    with tempfile.TemporaryDirectory() as tmp:
        store = make_toy_store(ToyConfig(out=f"{tmp}/stores", d=128, features=1024, active=8,
                                         rows=1 << 20))
        rates: dict[str, list[float]] = {name: [] for name in SETUPS}
        loops: dict[str, list[float]] = {name: [] for name in SETUPS}
        shares: dict[str, list[dict[str, float]]] = {name: [] for name in SETUPS}
        for r in range(a.rounds):
            order = list(SETUPS) if r % 2 == 0 else list(reversed(SETUPS))
            for name in order:
                clock = {"start": 0.0, "calls": 0.0, "finish": 0.0, "background": 0.0}
                trackers.open_trackers = timing(clock)
                try:
                    result = train(TrainConfig(
                        store=(store.url,), hook=(HOOK,), arch="topk", latents=(2048,), k=(32,),
                        tokens=a.tokens, batch_size=4096, out=str(Path(tmp) / f"{name}-{r}"),
                        log=SETUPS[name], eval_contexts=0, progress=False, plots=False))
                finally:
                    trackers.open_trackers = real
                rates[name].append(result.tokens_this_run / result.seconds)
                loop = result.seconds - clock["start"] - clock["finish"]
                loops[name].append(result.tokens_this_run / loop)
                shares[name].append({"share": clock["calls"] / loop,
                                     "cpu": clock["background"] / loop, **clock})
    report(a, rates, loops, shares)


def report(a: argparse.Namespace, rates: dict[str, list[float]], loops: dict[str, list[float]],
           shares: dict[str, list[dict[str, float]]]) -> None:
    base, loop_base = statistics.median(rates["none"]), statistics.median(loops["none"])
    print(f"TopK n=2048 k=32 on a d=128 toy store, {a.tokens} tokens ({a.tokens // 4096} steps "
          f"of 4096), log every 50 steps, median of {a.rounds} rounds:")
    print(f"  {'trackers':<12} {'tokens/s':>10} {'A/B ratio':>10} {'loop A/B':>9} "
          f"{'in calls':>9} {'ratio (same run)':>17} {'bg CPU':>7} {'start s':>8} "
          f"{'finish s':>9}")
    for name, values in rates.items():
        rate, loop = statistics.median(values), statistics.median(loops[name])
        share = statistics.median(s["share"] for s in shares[name])
        cpu = statistics.median(s["cpu"] for s in shares[name])
        start = statistics.median(s["start"] for s in shares[name])
        finish = statistics.median(s["finish"] for s in shares[name])
        print(f"  {name:<12} {rate:>10,.0f} {rate / base:>10.4f} {loop / loop_base:>9.4f} "
              f"{share:>9.3%} {1 - share:>17.4f} {cpu:>7.2%} {start:>8.2f} {finish:>9.2f}")


if __name__ == "__main__":
    main()
