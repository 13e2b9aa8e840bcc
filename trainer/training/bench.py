"""The trainer: one TopK dictionary's full training step (`Ensemble.step`, what `actstore
train` runs: forward, backward with AuxK, decoder constraint, clipping, fused Adam) for a
ladder of sizes, with the dense and the sparse step, fed from memory (the ceiling) and by the
loader from the store, with the step's peak memory beside the memory model's prediction."""

from __future__ import annotations

import gc
import time
import typing
from collections.abc import Iterator
from typing import Any, Literal

import torch

from actstore.bench.config import BenchSetup
from actstore.bench.storage import rows_of, window_rows
from actstore.loader.delivery import Normalizer
from actstore.loader.loader import Loader, LoaderConfig
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.ensemble import Ensemble, adam
from trainer.training.memory import available_bytes, dictionary_memory

Kernel = Literal["dense", "sparse"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batches(store: ActivationStore, batch: int, device: torch.device
             ) -> Iterator[torch.Tensor]:
    """Loader batches, epoch after epoch."""
    hook = store.hooks[0]
    loader = Loader(LoaderConfig(hooks=(hook,), batch_size=batch,
                                 shuffle_buffer=window_rows(store, batch),
                                 device=str(device), dtype="float32", normalize="scale",
                                 drop_last=True), store=store)
    while True:
        for b in loader:
            yield b.x[hook]


def one(store: ActivationStore, latents: int, kernel: Kernel, setup: BenchSetup) -> dict[str, Any]:
    """Tokens/s of the plan's steps from memory and from the loader, and the peak memory."""
    batch, steps, k, device = (setup.train_batch, setup.train_steps, setup.k,
                               torch.device(setup.device))
    d = store.layout.d_model[store.hooks[0]]
    cfg = DictionaryConfig(arch="topk", d_model=d, latents=latents, k=k,
                           dead_after_tokens=batch * 4)
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if cuda else 0
    ens = Ensemble([cfg], adam(1e-4), kernel=kernel).to(device)
    # normalised as the loader's batches are ("scale"), so both sides step on the same data
    norm = Normalizer.of(store, store.hooks[0], "scale")
    memory = norm.apply(rows_of(store, batch * steps)).to(device)
    ens.step(memory[:batch], cuda)  # warm-up: allocator, kernels, Adam state (autocast on cuda)
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        ens.step(memory[i * batch:(i + 1) * batch], cuda)
    _sync(device)
    t_memory = time.perf_counter() - t0
    # The step's own peak on cuda (parameters, gradients, Adam, buffers; not the batches held
    # here). On cpu none: in one process the resident set reuses memory earlier
    # configurations freed, so it is no measure; benchmarks/large_dictionary.py measures it
    # in a process per configuration.
    peak = (torch.cuda.max_memory_allocated(device) - base - memory.nbytes) if cuda else None
    del memory
    batches = _batches(store, batch, device)
    ens.step(next(batches), cuda)  # the loader's first window is read before timing
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        ens.step(next(batches), cuda)
    _sync(device)
    t_loader = time.perf_counter() - t0
    model = dictionary_memory(d=d, latents=latents, k=k, batch=batch, kernel=kernel)
    return {"latents": latents, "kernel": kernel, "batch": batch, "steps": steps,
            "memory_tokens_per_s": steps * batch / t_memory,
            "loader_tokens_per_s": steps * batch / t_loader,
            "loader_vs_memory": t_memory / t_loader, "peak_bytes": peak,
            "predicted_bytes": model.total}


def measure(store: ActivationStore, setup: BenchSetup,
            progress: Any = None) -> list[dict[str, Any]]:
    """Every (size, kernel) of the plan's ladder; a configuration the memory model says
    cannot fit is skipped with that reason instead of run out of memory."""
    batch, k, device = setup.train_batch, setup.k, torch.device(setup.device)
    free = available_bytes(device)
    budget = int(free * 0.8) if free is not None else None
    d = store.layout.d_model[store.hooks[0]]
    out: list[dict[str, Any]] = []
    for n in setup.latents:
        for kernel in typing.get_args(Kernel):
            need = dictionary_memory(d=d, latents=n, k=k, batch=batch, kernel=kernel).total
            if budget is not None and need > budget:
                out.append({"latents": n, "kernel": kernel, "batch": batch,
                            "skipped": f"needs {need / 2**30:.1f} GiB by the memory model, "
                                       f"{budget / 2**30:.1f} GiB usable"})
            else:
                out.append(one(store, n, kernel, setup))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if progress is not None:
                progress(f"trainer n={n:,} {kernel}")
    dense = {r["latents"]: r.get("memory_tokens_per_s") for r in out if r["kernel"] == "dense"}
    for r in out:
        if r["kernel"] == "sparse" and dense.get(r["latents"]) and "memory_tokens_per_s" in r:
            r["sparse_vs_dense"] = r["memory_tokens_per_s"] / dense[r["latents"]]
    return out
