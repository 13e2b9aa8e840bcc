"""Which Matryoshka defaults? Candidate nestings (`--widths`) and inner-prefix loss weights
(`--prefix-weight`) against BatchTopK of the same size, k, seed and batches, in one process:

- real: MiniLM `encoder.layer.3` (the quickstart's store, 10% held out): held-out FVU and L0,
  and FVU's ratio to BatchTopK's (the issue's bound: at most 1.05), also at BatchTopK's L0
  (the inference threshold moved until the held-out L0 matches);
- toy: the hierarchical toy store of `benchmarks/matryoshka.py` (128 parents with 2 children
  each in 64 dimensions, 512 latents, k = 8; `--toy-*` for another shape, e.g. `--toy-d 256
  --toy-features 192 --toy-active 4 --toy-latents 256`: fewer features than dimensions):
  absorption, MMCS to the parents and to the children, and the decoder's mixtures (hedging:
  the parents' latents' cosine with their children; the children's latents' with their
  parent), beside BatchTopK's.

    python -m benchmarks.matryoshka_sweep [--part real toy] [--rows NAME ...]
        [--latents 1024] [--tokens 262144] [--toy-tokens 2097152]

A row's widths are fractions of the dictionary's latents (`1/16..1`: n/16, n/8, n/4, n/2, n,
the doubling default before this sweep); every other setting is `actstore train`'s default.
Each row prints as it finishes; the table is printed again at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from actstore.generate.toy import HOOK as TOY_HOOK
from actstore.generate.toy import ToyConfig, make_toy_store
from benchmarks.defaults_sweep import HOLDOUT, HeldOut, Row, quickstart_store, run_row
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.run import evaluate
from trainer.training.config import TrainConfig, default_lr
from trainer.training.train import train

#: name: (arch, widths as divisors of n (n // w for each; () = the trainer's default),
#: prefix weight (None: the trainer's default)); `LR` gives some rows a learning rate.
ROWS: dict[str, tuple[str, tuple[int, ...], float | None]] = {
    "batchtopk": ("batchtopk", (), None),
    "default": ("matryoshka", (), None),
    "1/16..1, w=1": ("matryoshka", (16, 8, 4, 2, 1), 1.0),
    "1/16..1, w=0.25": ("matryoshka", (16, 8, 4, 2, 1), 0.25),
    "1/16..1, w=0.1": ("matryoshka", (16, 8, 4, 2, 1), 0.1),
    "1/4,1/2,1, w=1": ("matryoshka", (4, 2, 1), 1.0),
    "1/4,1/2,1, w=0.5": ("matryoshka", (4, 2, 1), 0.5),
    "1/4,1/2,1, w=0.25": ("matryoshka", (4, 2, 1), 0.25),
    "1/4,1/2,1, w=0.1": ("matryoshka", (4, 2, 1), 0.1),
    "1/4,1, w=1": ("matryoshka", (4, 1), 1.0),
    "1/4,1, w=0.5": ("matryoshka", (4, 1), 0.5),
    "1/4,1, w=0.25": ("matryoshka", (4, 1), 0.25),
    "1/4,1, w=0.1": ("matryoshka", (4, 1), 0.1),
    "1/2,1, w=0.25": ("matryoshka", (2, 1), 0.25),
    "1/8,1, w=0.25": ("matryoshka", (8, 1), 0.25),
    "default, lr x0.5": ("matryoshka", (), None),
    "default, lr x2": ("matryoshka", (), None),
    "batchtopk, lr x2": ("batchtopk", (), None),
}
#: name: the row's learning rate as a multiple of the default (`default_lr` of its size).
LR: dict[str, float] = {"default, lr x0.5": 0.5, "default, lr x2": 2.0, "batchtopk, lr x2": 2.0}


def settings(name: str, latents: int) -> tuple[str, dict[str, Any]]:
    """A row's architecture and the TrainConfig settings it names."""
    arch, divisors, weight = ROWS[name]
    given: dict[str, Any] = {}
    if divisors:
        given["widths"] = tuple(latents // d for d in divisors)
    if weight is not None:
        given["prefix_weight"] = weight
    if name in LR:
        given["lr"] = LR[name]  # a multiple, as `run_row` takes it
    return arch, given


def real(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    url = quickstart_store(a.stores)
    held = HeldOut(url)
    out: dict[str, dict[str, float]] = {}
    for name in a.rows:
        arch, given = settings(name, a.latents)
        ref = out.get("batchtopk")
        (s,) = run_row(url, held, Row(arch, a.latents, a.tokens, given),
                       match_l0=ref["l0"] if ref else None).values()
        out[name] = s
        ref = ref or s  # BatchTopK itself
        ratio, at_l0 = s["fvu"] / ref["fvu"], s.get("fvu_at_l0", s["fvu"]) / ref["fvu"]
        print(f"real {name:<20} FVU {s['fvu']:.4f}  L0 {s['l0']:.2f}  ratio {ratio:.4f}  "
              f"at BatchTopK's L0: FVU {s.get('fvu_at_l0', s['fvu']):.4f}, ratio "
              f"{at_l0:.4f}", flush=True)
    return out


def toy(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    url = make_toy_store(ToyConfig(out=a.stores, d=a.toy_d, features=a.toy_features,
                                   hierarchy=2, active=a.toy_active, decay=0.995,
                                   rows=1 << 21)).url
    out = {}
    for name in a.rows:
        arch, given = settings(name, a.toy_latents)
        if "lr" in given:
            given["lr"] *= default_lr(a.toy_latents)
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            train(TrainConfig(store=(url,), hook=(TOY_HOOK,), arch=arch,  # type: ignore[arg-type]
                              latents=(a.toy_latents,), k=(a.toy_k,), tokens=a.toy_tokens,
                              batch_size=4096,
                              holdout=HOLDOUT, out=str(run), eval_contexts=0, progress=False,
                              plots=False, **given))
            ev = evaluate(EvalConfig(run=str(run), out=str(Path(tmp) / "report"), ks=(a.toy_k,),
                                     splice_contexts=0, ica="none"))
        (s,) = ev.dictionaries.values()
        out[name] = s
        print(f"toy  {name:<20} absorption {s['absorption']:.4f}  MMCS parents "
              f"{s['mmcs_parents']:.4f}  children {s['mmcs_children']:.4f}  hedging "
              f"{s['hedging']:.4f}  child-parent cos {s['child_parent_cos']:.4f}  MMCS all "
              f"{s['mmcs']:.4f}  L0 {s['l0']:.2f}  FVU {s['fvu']:.4f}", flush=True)
    return out


def table(result: dict[str, dict[str, dict[str, float]]]) -> None:
    if "real" in result:
        r = result["real"]
        ref = r.get("batchtopk", {}).get("fvu", float("nan"))
        print("| row | held-out FVU | L0 | FVU / BatchTopK's | at BatchTopK's L0 |\n"
              "| --- | --- | --- | --- | --- |")
        for name, s in r.items():
            print(f"| {name} | {s['fvu']:.4f} | {s['l0']:.2f} | {s['fvu'] / ref:.3f} | "
                  f"{s.get('fvu_at_l0', s['fvu']) / ref:.3f} |")
    if "toy" in result:
        print("| row | absorption | MMCS to parents | to children | hedging | child-parent cos "
              "| MMCS, all | L0 | FVU |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, s in result["toy"].items():
            print(f"| {name} | {s['absorption']:.4f} | {s['mmcs_parents']:.4f} | "
                  f"{s['mmcs_children']:.4f} | {s['hedging']:.4f} | "
                  f"{s['child_parent_cos']:.4f} | {s['mmcs']:.4f} | {s['l0']:.2f} | "
                  f"{s['fvu']:.4f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", nargs="+", choices=["real", "toy"], default=["real", "toy"])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS),
                   help="rows to run (batchtopk first: the ratios' reference)")
    p.add_argument("--latents", type=int, default=1024, help="real part's size")
    p.add_argument("--tokens", type=int, default=1 << 18, help="real part's tokens")
    p.add_argument("--toy-tokens", type=int, default=1 << 21)
    p.add_argument("--toy-d", type=int, default=64, help="toy width (64: in superposition)")
    p.add_argument("--toy-features", type=int, default=384, help="parents and children")
    p.add_argument("--toy-active", type=float, default=8, help="features active per row")
    p.add_argument("--toy-latents", type=int, default=512)
    p.add_argument("--toy-k", type=int, default=8)
    p.add_argument("--stores", default="bench-out/stores")
    p.add_argument("--out", default="bench-out/matryoshka_sweep.json")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {}
    for part in a.part:
        result[part] = real(a) if part == "real" else toy(a)
    table(result)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), **result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
