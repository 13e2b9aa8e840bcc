"""EleutherAI sparsify's side of `benchmarks/peers/compare.py`; runs in the peers' environment
(`benchmarks/peers/setup.sh`), never imports actstore. Each subcommand prints one JSON line.

    sparsify_run.py train --model DIR --layer L --tokens T.npy --latents N --k K --out DIR
                          [--transcode]
    sparsify_run.py score --rows X.npy [--targets Y.npy] SAE_DIR [SAE_DIR ...]

sparsify trains from the model directly (it caches nothing): `train` runs its `Trainer` on the
saved Hugging Face checkpoint over the given token ids, hooking block L's output, at its
defaults for everything the comparison does not fix (signum optimiser, its learning-rate rule,
1000 warmup steps, no AuxK). The batch is in sequences: `--batch-size` tokens / context length.
With `--transcode` it trains a transcoder instead (`SparseCoderConfig(transcode=True)`) on
block L's MLP, hookpoint `h.L.mlp` in its naming (modules of the model's `base_model`): it
predicts the MLP's output from the MLP's input, both taken by its forward hook on that module.
`score` loads each saved `SparseCoder` and scores it on the given rows with the same code as
`saelens_run.py score` (`scoring.score_rows`): FVU, L0, latents that never fire; with
`--targets`, a transcoder's FVU of those target rows predicted from `--rows`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks.peers.scoring
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
T0 = time.perf_counter()


def train(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import transformers
    from datasets import Dataset
    from sparsify import SparseCoderConfig, TrainConfig, Trainer

    tokens = np.load(a.tokens)
    dataset = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model)
    where: dict[str, list[Any]] = ({"hookpoints": [f"h.{a.layer}.mlp"]} if a.transcode
                                   else {"layers": [a.layer]})
    cfg = TrainConfig(SparseCoderConfig(num_latents=a.latents, k=a.k, transcode=a.transcode),
                      batch_size=a.batch_size // tokens.shape[1], log_to_wandb=False,
                      save_dir=a.out, run_name="run", save_every=10**9, **where)
    t = time.perf_counter()
    trainer = Trainer(cfg, dataset, model)
    trainer.fit()
    return {"seconds_in_trainer": time.perf_counter() - t, "tokens": int(tokens.size)}


def score(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from sparsify import SparseCoder

    from benchmarks.peers.scoring import Reconstruct, score_files

    def load(path: str) -> tuple[Reconstruct, int, str]:
        sae = SparseCoder.load_from_disk(path, device="cpu")

        def reconstruct(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            enc = sae.encode(xb)  # a transcoder's: no b_dec taken from its input
            out = sae.decode(enc.top_acts, enc.top_indices)
            if sae.W_skip is not None:  # as its forward adds it
                out = out + xb @ sae.W_skip.mT
            return out, enc.top_indices[enc.top_acts > 0]
        kind = " (transcoder)" if sae.cfg.transcode else ""
        return reconstruct, sae.num_latents, type(sae).__name__ + kind
    return score_files(a.rows, a.saes, load, targets=a.targets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="TopK training from the model, sparsify's defaults")
    t.add_argument("--model", required=True, help="saved HF causal LM checkpoint folder")
    t.add_argument("--layer", type=int, required=True,
                   help="block whose output is hooked (--transcode: whose MLP)")
    t.add_argument("--tokens", required=True, help=".npy (contexts, context_length) int")
    t.add_argument("--latents", type=int, required=True, help="dictionary size")
    t.add_argument("--k", type=int, required=True, help="active latents per token")
    t.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--transcode", action="store_true",
                   help="a transcoder of block L's MLP (hookpoint h.L.mlp): input -> output")
    s = sub.add_parser("score", help="FVU / L0 / never-firing latents on held-out rows")
    s.add_argument("--rows", required=True, help=".npy (rows, d) held-out activations")
    s.add_argument("--targets", help=".npy (rows, d) target rows of transcoders, row for row")
    s.add_argument("saes", nargs="+", help="saved SparseCoder folders")
    a = p.parse_args()
    result = {"train": train, "score": score}[a.cmd](a)
    result["seconds_in_process"] = time.perf_counter() - T0
    print(json.dumps(result), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
