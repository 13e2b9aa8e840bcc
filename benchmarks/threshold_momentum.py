"""How fast should batchtopk's inference threshold follow training? One default-settings
batchtopk run on the quickstart's store records the smallest activation each batch kept (what
the threshold averages); the trained dictionary is then scored on the held-out rows at the
threshold each momentum would have reached, and at the last batch's own value.

    python -m benchmarks.threshold_momentum [--steps 64] [--latents 1024] [--stores DIR]

The numbers and the reading: trainer/README.md, "Default sparsity".
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.defaults_sweep import BATCH, HOLDOUT, HOOK, HeldOut, quickstart_store
from trainer.dictionary import dictionaries
from trainer.evaluation.run import load_run, score
from trainer.training.config import TrainConfig
from trainer.training.train import train

MOMENTA = (0.01, 0.05, 0.1, 0.3)


def recorded_run(url: str, out: str, steps: int, latents: int) -> list[float]:
    """Train at the defaults; the smallest kept activation of every step."""
    seen: list[float] = []
    update = dictionaries.SparseDictionary._update_threshold

    def record(self: dictionaries.SparseDictionary, smallest: torch.Tensor) -> None:
        seen.append(float(smallest))
        update(self, smallest)

    dictionaries.SparseDictionary._update_threshold = record  # type: ignore[method-assign]
    try:
        train(TrainConfig(store=(url,), hook=(HOOK,), arch="batchtopk", latents=(latents,), out=out,
                          tokens=steps * BATCH, batch_size=BATCH, holdout=HOLDOUT,
                          eval_contexts=0, progress=False, plots=False))
    finally:
        dictionaries.SparseDictionary._update_threshold = update  # type: ignore[method-assign]
    return seen


def average(seen: list[float], momentum: float) -> float:
    """The threshold `_update_threshold` reaches at `momentum` (it starts at the first value)."""
    t = seen[0]
    for x in seen[1:]:
        t = (1 - momentum) * t + momentum * x
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=64, help="training steps (default: 64)")
    p.add_argument("--latents", type=int, default=1024, help="dictionary size (default: 1024)")
    p.add_argument("--stores", default="bench-out/stores", help="where the store is kept")
    a = p.parse_args()
    url = quickstart_store(a.stores)
    held = HeldOut(url)
    with tempfile.TemporaryDirectory() as out:
        seen = recorded_run(url, out, a.steps, a.latents)
        member = load_run(out)[0]
        print(f"smallest kept activation: step 1 {seen[0]:.4f}, step {len(seen)} {seen[-1]:.4f}")
        print("| threshold from | value | held-out L0 | FVU |\n| --- | --- | --- | --- |")
        rows = [(f"momentum {m:g}", average(seen, m)) for m in MOMENTA]
        for name, value in [*rows, ("the last batch", seen[-1])]:
            member.sae.threshold.fill_(value)
            s = score(member, held.rows, 1, torch.device("cpu"), held.variance)[0]
            print(f"| {name} | {value:.4f} | {s['l0']:.1f} | {s['fvu']:.4f} |")


if __name__ == "__main__":
    main()
