"""SAELens' side of `benchmarks/peers/compare.py`; runs in the peers' environment
(`benchmarks/peers/setup.sh`), never imports actstore. Each subcommand prints one JSON line.

    saelens_run.py cache --model DIR --layer L --tokens T.npy --out DIR [--batch-prompts 8]
    saelens_run.py train --model DIR --layer L --cache DIR --latents N --k K --tokens N --out DIR
    saelens_run.py import-cache --acts X.npy --tokens T.npy --layer L --out DIR
    saelens_run.py score --rows X.npy SAE_DIR [SAE_DIR ...]

`cache` and `train` run SAELens' own runners (`CacheActivationsRunner`,
`LanguageModelSAETrainingRunner`) at their defaults for everything the comparison does not fix.
The model is the saved Hugging Face GPT-2 checkpoint, as a TransformerLens `HookedTransformer`
with the same weights (`convert_gpt2_weights`, no folding or centring), which SAELens runs up to
the hooked block only; `CacheActivationsRunner` has no model argument, so its `load_model` is
replaced for the constructor's duration. `import-cache` writes given activation rows (another
tool's, e.g. of a model SAELens cannot run, such as MiniLM's BERT encoder) in the format
`CacheActivationsRunner` writes, so `train` reads exactly those rows. `score` loads any
SAELens-format dictionary (SAELens' own, and actstore's export) with `SAE.load_from_disk` and
scores it on the same rows: FVU, L0, latents that never fire.
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


def hooked_gpt2(model_dir: str) -> Any:
    """The saved HF GPT-2 as a HookedTransformer with identical weights."""
    import transformers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf = transformers.GPT2LMHeadModel.from_pretrained(model_dir)
    hf.eval()  # type: ignore[no-untyped-call]
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions,
        act_fn="gelu_new", normalization_type="LN", eps=c.layer_norm_epsilon,
        original_architecture="GPT2LMHeadModel", device="cpu")
    model = HookedTransformer(cfg, tokenizer=transformers.AutoTokenizer.from_pretrained(model_dir))
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    return model.eval()


def cache(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import sae_lens.cache_activations_runner as car
    from datasets import Dataset
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    tokens = np.load(a.tokens)
    model = hooked_gpt2(a.model)
    dataset = Dataset.from_dict({"input_ids": tokens.tolist()})
    cfg = CacheActivationsRunnerConfig(
        dataset_path="pretokenized-in-memory", model_name="gpt2-random",
        model_batch_size=a.batch_prompts, hook_name=f"blocks.{a.layer}.hook_resid_post",
        d_in=model.cfg.d_model, training_tokens=int(tokens.size),
        context_size=int(tokens.shape[1]), new_cached_activations_path=a.out, device="cpu",
        prepend_bos=False,  # the contexts already start with BOS, as actstore's do
        # One buffer holding exactly these tokens: SAELens writes whole buffers (2 GB by
        # default), cycling the dataset until one is full.
        buffer_size_gb=(tokens.size + 1) * model.cfg.d_model * 4 / 1e9)
    t = time.perf_counter()
    saved = car.load_model
    car.load_model = lambda *_a, **_k: model
    try:
        runner = CacheActivationsRunner(cfg, override_dataset=dataset)
    finally:
        car.load_model = saved
    runner.run()
    return {"seconds_in_runner": time.perf_counter() - t, "tokens": int(tokens.size)}


def import_cache(a: argparse.Namespace) -> dict[str, Any]:
    """(contexts, context_length, d) activations and their token ids as a SAELens cache."""
    import numpy as np
    from datasets import Array2D, Dataset, Features, Sequence, Value

    acts, tokens = np.load(a.acts), np.load(a.tokens)
    n, ctx, d = acts.shape
    hook = f"blocks.{a.layer}.hook_resid_post"
    features = Features({hook: Array2D(shape=(ctx, d), dtype="float32"),
                         "token_ids": Sequence(Value(dtype="int32"), length=ctx)})
    Dataset.from_dict({hook: list(acts), "token_ids": tokens.tolist()},
                      features=features).save_to_disk(a.out)
    return {"contexts": int(n), "tokens": int(n * ctx), "d": int(d)}


def train(a: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    model = hooked_gpt2(a.model)  # not run: training from a cache without wandb runs no evals
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=a.d_in or model.cfg.d_model, d_sae=a.latents, k=a.k),
        model_name="gpt2-random", hook_name=f"blocks.{a.layer}.hook_resid_post",
        dataset_path="unused-cached", use_cached_activations=True,
        cached_activations_path=a.cache, context_size=a.context_size,
        training_tokens=a.tokens, train_batch_size_tokens=a.batch_size, device="cpu",
        # Its mixing buffer holds n_batches_in_buffer x context_size tokens and must hold two
        # batches; the default (20) is below one batch of 4096 at context 128.
        n_batches_in_buffer=max(20, -(-2 * a.batch_size // a.context_size)),
        logger=LoggingConfig(log_to_wandb=False), output_path=a.out, checkpoint_path=None,
        n_checkpoints=0, verbose=False)
    t = time.perf_counter()
    # It opens a token dataset even when it trains from a cache (offline: give it one).
    tokens = Dataset.from_dict({"input_ids": [[0] * a.context_size]})
    runner = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=tokens)
    runner.run()
    return {"seconds_in_runner": time.perf_counter() - t, "tokens": a.tokens}


def score(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from sae_lens import SAE

    from benchmarks.peers.scoring import Reconstruct, score_files

    def load(path: str) -> tuple[Reconstruct, int, str]:
        sae = SAE.load_from_disk(path, device="cpu")

        def reconstruct(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = sae.encode(xb)
            return sae.decode(z), z.nonzero()[:, 1]
        return reconstruct, sae.cfg.d_sae, type(sae).__name__
    return score_files(a.rows, a.saes, load)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="CacheActivationsRunner over pre-tokenized contexts")
    t = sub.add_parser("train", help="TopK training from a cache, SAELens defaults")
    for q in (c, t):
        q.add_argument("--model", required=True, help="saved HF GPT-2 checkpoint folder")
        q.add_argument("--layer", type=int, required=True, help="block whose output is hooked")
        q.add_argument("--out", required=True, help="output folder (must not exist)")
    c.add_argument("--tokens", required=True, help=".npy (contexts, context_length) int")
    c.add_argument("--batch-prompts", type=int, default=8, help="contexts per forward pass")
    t.add_argument("--cache", required=True, help="the `cache` output folder")
    t.add_argument("--latents", type=int, required=True, help="dictionary size")
    t.add_argument("--k", type=int, required=True, help="active latents per token")
    t.add_argument("--tokens", type=int, required=True, help="training tokens")
    t.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    t.add_argument("--context-size", type=int, default=128, help="the cache's context length")
    t.add_argument("--d-in", type=int, help="width of the cached rows (default: the model's)")
    m = sub.add_parser("import-cache", help="activation rows (.npy) as a SAELens cache")
    m.add_argument("--acts", required=True, help=".npy (contexts, context_length, d) float32")
    m.add_argument("--tokens", required=True, help=".npy (contexts, context_length) int")
    m.add_argument("--layer", type=int, required=True, help="names the hook column")
    m.add_argument("--out", required=True, help="output folder")
    s = sub.add_parser("score", help="FVU / L0 / never-firing latents on held-out rows")
    s.add_argument("--rows", required=True, help=".npy (rows, d) held-out activations")
    s.add_argument("saes", nargs="+", help="SAELens-format dictionary folders")
    a = p.parse_args()
    result = {"cache": cache, "train": train, "score": score,
              "import-cache": import_cache}[a.cmd](a)
    result["seconds_in_process"] = time.perf_counter() - T0
    print(json.dumps(result), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
