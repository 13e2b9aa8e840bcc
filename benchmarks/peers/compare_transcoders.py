"""Transcoders: actstore beside EleutherAI's sparsify on this machine (`compare.py
--transcoder`): the same model, the same token ids, the same MLP, the same sizes, both scored
by the same code (`scoring.score_rows` with target rows) on held-out rows neither trained on.

    python -m benchmarks.peers.compare --transcoder [--tokens 262144] [--rounds 3]

Work: compare.py's random-initialised GPT-2 (4 blocks, d=256, context 128) over the same
standard-library corpus; the MLP of block 2: its input `transformer.h.2.mlp:input` (what the
MLP receives: the second layer norm's output) predicts its output `transformer.h.2.mlp`, a
TopK transcoder with 2048 latents, k=32, batch 4096 tokens.
- actstore: `actstore generate` with both hooks into one store (timed, the whole command),
  then `actstore train --kind transcoder --hook IN --target-hook OUT --arch topk` (timed, the
  whole command; its own tokens/s line is the run alone) at its defaults otherwise.
- sparsify: its `Trainer` with `SparseCoderConfig(transcode=True)` on hookpoint `h.2.mlp`
  (its naming: modules of the model's `base_model`), which caches nothing and runs the model
  itself over the same token ids (the token ids of actstore's store's whole contexts), at its
  defaults otherwise (signum, its learning-rate rule, no AuxK).
- Quality: FVU of the MLP's output and L0 on the held-out rows (both hooks of the held-out
  files, one store generated once): sparsify's `SparseCoder.load_from_disk` loads its own
  transcoder and actstore's (through actstore's sparsify export: input normalisation folded,
  no b_dec taken from the input, as sparsify's transcoders do), and `sparsify_run.py score`
  scores both with one function.
Rounds alternate which tool trains first; the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers.compare import (
    BATCH,
    CTX,
    HERE,
    LATENTS,
    LAYER,
    K,
    corpus,
    generate,
    measured,
    random_gpt2,
)

IN, OUT = f"transformer.h.{LAYER}.mlp:input", f"transformer.h.{LAYER}.mlp"


def held_rows(work: Path, model: str, data: tuple[str, str], rows: int) -> tuple[str, str]:
    """The held-out files' input and target rows as .npy, row for row (made once)."""
    from actstore import ActivationStore

    _, url = generate(model, (IN, OUT), data[1], work / "held", rows)
    store = ActivationStore.open(url)
    paths = (str(work / "held-in.npy"), str(work / "held-out.npy"))
    for hook, path in zip((IN, OUT), paths, strict=True):
        np.save(path, store.read_float32(hook, 0, store.num_rows))
    return paths


def cache_ours(work: Path, model: str, dataset: str, tokens: int
               ) -> tuple[dict[str, Any], str, Path]:
    """actstore's store of both hooks (timed), and its whole contexts' token ids for sparsify."""
    from actstore import ActivationStore

    gen, url = generate(model, (IN, OUT), dataset, work / "stores", tokens)
    store = ActivationStore.open(url)
    ids = np.array([t for t in store.read_contexts(["tokens"]).column("tokens").to_pylist()
                    if len(t) == CTX], dtype=np.int32)
    np.save(work / "tokens.npy", ids)
    return gen, url, work / "tokens.npy"


def train_ours(work: Path, url: str, tokens: int) -> dict[str, Any]:
    """`actstore train --kind transcoder`, timed as a whole command and by its own line."""
    run = measured([sys.executable, "-m", "trainer.cli", "--store", url, "--hook", IN,
                    "--kind", "transcoder", "--target-hook", OUT, "--arch", "topk",
                    "--latents", str(LATENTS), "--k", str(K), "--tokens", str(tokens),
                    "--batch-size", str(BATCH), "--out", str(work / "ours"), "--no-progress"])
    found = re.search(r"this run (\d+) tokens in ([\d.]+)s \((\d+) tokens/s\)", run["out"])
    assert found, run["out"]
    return {"wall": run["wall"], "rss_mb": run["rss_mb"], "tokens": int(found.group(1)),
            "run_tokens_per_s": float(found.group(3)),
            "export": str(next((work / "ours" / "dictionaries").glob("*/sparsify")))}


def train_theirs(work: Path, peer: str, model: str, ids: Path) -> dict[str, Any]:
    """sparsify's transcoder of the same MLP, from the model over the same token ids."""
    run = measured([peer, str(HERE / "sparsify_run.py"), "train", "--transcode",
                    "--model", model, "--layer", str(LAYER), "--tokens", str(ids),
                    "--latents", str(LATENTS), "--k", str(K), "--batch-size", str(BATCH),
                    "--out", str(work / "sparsify")])
    done = json.loads(run["out"].strip().splitlines()[-1])
    return {"wall": run["wall"], "rss_mb": run["rss_mb"], "tokens": done["tokens"],
            "run_tokens_per_s": done["tokens"] / done["seconds_in_trainer"],
            "export": str(work / "sparsify" / "run" / f"h.{LAYER}.mlp")}


def one_round(work: Path, i: int, model: str, data: tuple[str, str], a: argparse.Namespace,
              *, held: tuple[str, str]) -> dict[str, Any]:
    """Caching then training for actstore, training for sparsify (first on odd rounds), then
    one scoring call for both transcoders."""
    gen, url, ids = cache_ours(work, model, data[0], a.tokens)
    tokens = int(np.load(ids).size)  # the same tokens for both: the whole contexts
    t: dict[str, Any] = {}
    for side in (("sparsify", "actstore") if i % 2 else ("actstore", "sparsify")):
        t[side] = (train_ours(work, url, tokens) if side == "actstore"
                   else train_theirs(work, a.peer_python, model, ids))
    paths = [t["actstore"].pop("export"), t["sparsify"].pop("export")]
    scored = measured([a.peer_python, str(HERE / "sparsify_run.py"), "score",
                       "--rows", held[0], "--targets", held[1], *paths])
    s = json.loads(scored["out"].strip().splitlines()[-1])
    for side, path in zip(("actstore", "sparsify"), paths, strict=True):
        t[side].update(s[path])
    walls = {"actstore": gen["wall"] + t["actstore"]["wall"], "sparsify": t["sparsify"]["wall"]}
    return {"train": t, "cache": {"actstore": {"wall": gen["wall"], "rss_mb": gen["rss_mb"]}},
            # token ids to a trained transcoder, whole commands
            "end_to_end": {side: {"wall": w, "tokens_per_s": t[side]["tokens"] / w}
                           for side, w in walls.items()}}


def table(rounds: list[dict[str, Any]]) -> str:
    """Medians over the rounds, actstore beside sparsify, and the paired ratios."""
    def med(*keys: str) -> float:
        vals = []
        for r in rounds:
            v: Any = r
            for k in keys:
                v = v[k]
            vals.append(float(v))
        return statistics.median(vals)

    def row(name: str, stage: str, metric: str, theirs: bool = True) -> str:
        ours = med(stage, "actstore", metric)
        sp = med(stage, "sparsify", metric) if theirs else None
        cells = [f"{ours:,.3f}", "" if sp is None else f"{sp:,.3f}",
                 f"{ours / sp:.2f}" if sp else ""]
        return f"| {name} | {' | '.join(cells)} |"

    speed = [r["train"]["actstore"]["run_tokens_per_s"] / r["train"]["sparsify"]["run_tokens_per_s"]
             for r in rounds]
    paired = ", ".join(f"{x:.2f}" for x in speed)
    rows = [
        row("training tokens/s (the run, no start-up)", "train", "run_tokens_per_s"),
        f"| training tokens/s, each round (paired) | | | {paired} |",
        row("training wall s (whole command)", "train", "wall"),
        row("caching wall s (`actstore generate`, both hooks, whole command)", "cache", "wall",
            theirs=False),
        row("token ids to a trained transcoder: tokens/s (whole commands)", "end_to_end",
            "tokens_per_s"),
        row("token ids to a trained transcoder: wall s", "end_to_end", "wall"),
        row("training peak RSS MB", "train", "rss_mb"),
        row("training tokens", "train", "tokens"),
        row("held-out FVU of the MLP output", "train", "fvu"),
        row("held-out L0", "train", "l0"),
        row("latents never firing on held-out rows", "train", "never_fire")]
    return "\n".join([f"| median of {len(rounds)} rounds | actstore | sparsify | "
                      "actstore / sparsify |", "| --- | --- | --- | --- |", *rows])


def run(a: argparse.Namespace, base: Path) -> None:
    """compare.py --transcoder: the rounds in `base`, the table on stdout, JSON to `a.out`."""
    model = random_gpt2(base)
    data = corpus(base, chars=int((a.tokens + 10 * a.held_out) * 6))
    held = held_rows(base, model, data, a.held_out)
    rounds = []
    for i in range(a.rounds):
        rounds.append(one_round(base / f"round{i}", i, model, data, a, held=held))
        print(json.dumps(rounds[-1]), flush=True)
    print(table(rounds))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tokens": a.tokens,
                               "held_out": a.held_out, "hooks": [IN, OUT], "latents": LATENTS,
                               "k": K, "batch_size": BATCH, "rounds": rounds,
                               "table": table(rounds)}, indent=1))
