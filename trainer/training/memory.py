"""How much memory a training run needs on each device, predicted before any work.

    parameters   W_enc, W_dec (latents/tp · d each), b_enc (latents/tp), b_dec (d, replicated),
                 log_threshold (jumprelu), float32
    gradients    the same again
    optimizer    Adam's two moments: twice the parameters (fused: no temporaries)
    ddp          DDP's gradient buckets when dp > 1: the gradients once more
    counters     per latent int64: tokens since fired, and the run's firing counts (2)
    step         what the step holds at its peak beyond those:
                   dense    (batch, latents/tp) float32 tensors: DENSE_TENSORS of them with AuxK
                            (pre-activations, codes, AuxK codes and their gradients), fewer
                            without
                   sparse   one tile of TILE_COPIES · BLOCK_ELEMENTS floats, the (batch, k)
                            selections, one more (latents/tp, d) buffer in the backward
                            (measured, not yet traced), and the batch a few times
    a CLT        over L layers: L encoders, and L(L+1)/2 decoders of (latents/tp, d_out) (layer
                 l's latents write into layers l … L-1), so its decoder grows as L²/2; the
                 step holds every layer's codes and partial decodes at once for the backward

The constants are fitted to peaks measured by `benchmarks/large_dictionary.py` (CPU: the
step's resident-set high-water mark in a subprocess; CUDA: max_memory_allocated), which
prints prediction and measurement side by side. Host memory for the loader's shuffle window
is reported beside the device total, not in it.
"""

from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch

from actstore.store.format import is_float8
from actstore.store.spec import StorageDtype
from trainer.dictionary.dictionaries import resolve_kernel
from trainer.dictionary.kernels import selection
from trainer.training.config import TrainConfig

F32, I64 = 4, 8
#: (batch, latents) float32 tensors the dense step holds at its peak, with and without AuxK
#: (fitted: benchmarks/large_dictionary.py, CPU, n=16,384 and 65,536, batch 1,024 and 4,096).
DENSE_TENSORS = {True: 4.0, False: 3.0}
#: Tile-sized buffers alive at once in the sparse step's selection pass (the tile, the
#: masked-in columns AuxK gathers, top-k's scratch).
TILE_COPIES = 2.0
#: Per-(row, selected entry) bytes of the sparse step: ids, values and their gradients, the
#: sort by latent in the encoder's backward, embedding_bag's buffers.
PER_SELECTED = 64


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes on one device for one dictionary (or an ensemble's sum)."""

    parameters: int
    gradients: int
    optimizer: int
    ddp: int
    counters: int
    step: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def __add__(self, other: MemoryPlan) -> MemoryPlan:
        """Members of an ensemble: everything adds up except the step, which they take in
        turn (the larger one's buffers)."""
        return MemoryPlan(*(max(a, b) if f.name == "step" else a + b for f, a, b in zip(
            fields(self), _values(self), _values(other), strict=True)))

    def table(self) -> str:
        rows = [f"  {f.name:<11} {gib(getattr(self, f.name)):>10}" for f in fields(self)]
        return "\n".join([*rows, f"  {'total':<11} {gib(self.total):>10}"])


def _values(p: MemoryPlan) -> list[int]:
    return [getattr(p, f.name) for f in fields(p)]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def dictionary_memory(*, d: int, latents: int, k: int, batch: int,
                      arch: str = "topk", kernel: Literal["dense", "sparse"] = "sparse",
                      dp: int = 1, tp: int = 1, auxk: bool = True, d_out: int | None = None,
                      skip: bool = False, layers: int = 1) -> MemoryPlan:
    """Bytes on each device for one dictionary: `batch` is the global batch (split over dp),
    `latents` the whole dictionary (split over tp; a CLT's: per layer); a transcoder's target
    is `d_out` wide (default d), a skip transcoder holds a (d, d_out) skip on every rank, and
    a CLT over `layers` layers holds L encoders and L(L+1)/2 decoders."""
    local_n = -(-latents // tp)
    rows = batch // dp
    out = d_out or d
    decoders = decoder_count(layers)
    params = F32 * (layers * local_n * (d + 1 + (arch == "jumprelu")) + decoders * local_n * out
                    + layers * out + skip * d * out)
    auxk = auxk and arch in ("topk", "batchtopk", "matryoshka")
    if kernel == "dense":
        step = int(DENSE_TENSORS[auxk] * rows * local_n * F32) * layers
    else:
        width = max(1, selection.BLOCK_ELEMENTS // max(1, rows))
        tile = rows * min(local_n, width) * F32
        picked = rows * k * (3 if auxk else 1) * PER_SELECTED * layers  # AuxK: 2k more per row
        step = int(TILE_COPIES * tile) + picked + local_n * out * layers * F32
    # a CLT's partial decodes (every layer's, into its own and the later targets)
    step += (rows * out * decoders * F32) if layers > 1 else 0
    # the batch and its centred copy; the target, its reconstruction and their gradient
    step += layers * (2 * rows * d * F32 + (2 if d_out is None else 3) * rows * out * F32)
    return MemoryPlan(parameters=params, gradients=params, optimizer=2 * params,
                      ddp=params if dp > 1 else 0, counters=3 * local_n * layers * I64,
                      step=step)


def decoder_count(layers: int) -> int:
    """Decoders of a CLT over `layers` layers (one per pair l <= j): L(L+1)/2."""
    return layers * (layers + 1) // 2


def run_memory(cfg: TrainConfig, d_model: int, dp: int = 1, tp: int | None = None,
               batch: int | None = None, *, d_out: int | None = None,
               sites: tuple[int, ...] = ()) -> MemoryPlan:
    """Bytes on each device for every dictionary of `cfg` (an ensemble's members add up), at
    its --tp unless `tp` is given (`d_out`: a transcoder's target width; `sites`: a
    crosscoder's widths, an SAE over d_model = their sum)."""
    plans = [dictionary_memory(d=d_model, latents=m.latents, k=m.k or 0,
                               batch=batch or cfg.batch_size, arch=m.arch,
                               kernel=resolve_kernel(m.arch, cfg.kernel), dp=dp,
                               tp=tp or cfg.tp, d_out=m.d_out, skip=m.skip,
                               layers=m.layers)
             for m in cfg.dictionaries(d_model, d_out, sites)]
    return functools.reduce(operator.add, plans)


def loader_bytes(cfg: TrainConfig, d_model: int, itemsize: int, dp: int = 1,
                 d_out: int | None = None, *, scale_bytes: int = 0) -> int:
    """Host memory of one rank's loader: the window being served and the next one, decoded
    into the store's dtype (a transcoder's: both hooks; a CLT's: all of them; a crosscoder's
    sites: d_model in all), and an 8-bit store's row scales beside them (`scale_bytes` per
    row and hook read)."""
    per_rank = cfg.batch_size // dp
    window = max(per_rank, cfg.shuffle_buffer - cfg.shuffle_buffer % per_rank)
    row = d_model if cfg.kind == "crosscoder" else len(cfg.hook) * (d_model + (d_out or 0))
    arrays = len(cfg.hook) * (2 if d_out and cfg.kind != "crosscoder" else 1)
    return 2 * window * (row * itemsize + arrays * scale_bytes)


def scale_bytes_of(dtype: StorageDtype) -> int:
    """Bytes of row scales per row and hook in a store of `dtype` (a float32 per row in
    8-bit stores, none otherwise)."""
    return 4 if is_float8(dtype) else 0


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this run on `device`: the GPU's free memory, or the host's available
    memory (MemAvailable) for the CPU; None when this machine cannot tell (no such GPU here,
    not Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else None
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def describe(cfg: TrainConfig, d_model: int, itemsize: int, dp: int,
             device: torch.device, *, d_out: int | None = None,
             sites: tuple[int, ...] = (), scale_bytes: int = 0) -> str:
    """What `actstore train --plan` prints: the prediction, what is free, and what fits."""
    need = run_memory(cfg, d_model, dp, d_out=d_out, sites=sites)
    host = loader_bytes(cfg, d_model, itemsize, dp, d_out, scale_bytes=scale_bytes)
    lines = [f"memory per device ({device.type}, dp={dp}, tp={cfg.tp}, batch {cfg.batch_size}, "
             f"{len(cfg.dictionaries(d_model, d_out, sites))} dictionaries):", need.table(),
             f"  host: the loader's two shuffle windows, {gib(host)}"]
    if cfg.kind == "clt":
        layers = len(cfg.hook)
        lines.insert(1, f"  a CLT over {layers} layers: {layers} encoders and "
                        f"{decoder_count(layers)} decoders (one per layer pair l <= j; the "
                        "decoders grow as L²/2)")
    if cfg.kind == "crosscoder":
        lines.insert(1, f"  a crosscoder over {len(sites)} sites: an SAE over their "
                        f"{d_model} dimensions side by side")
    free = available_bytes(device)
    lines.append(f"free on {device.type}: " + (gib(free) if free is not None
                                                 else "unknown on this machine"))
    problem = fit_problem(cfg, d_model, itemsize, dp, device, d_out=d_out, sites=sites,
                          scale_bytes=scale_bytes)
    if problem or free is not None:
        lines.append(problem or "fits")
    return "\n".join(lines)


def sharing(device: torch.device) -> int:
    """Ranks whose memory comes out of the same pool: on the CPU, every rank on this host
    (torchrun's LOCAL_WORLD_SIZE); a GPU is one rank's."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1


def fit_problem(cfg: TrainConfig, d_model: int, itemsize: int, dp: int,
                device: torch.device, *, d_out: int | None = None,
                sites: tuple[int, ...] = (), scale_bytes: int = 0) -> str | None:
    """Why the run cannot fit on `device`, naming the smallest latent sharding (tp) and the
    largest batch that would; None when it fits."""
    free = available_bytes(device)
    if free is None:
        return None  # cannot tell here: the run finds out
    free //= sharing(device)
    host = (loader_bytes(cfg, d_model, itemsize, dp, d_out, scale_bytes=scale_bytes)
            if device.type == "cpu" else 0)
    def total(tp: int | None = None, batch: int | None = None) -> int:
        return run_memory(cfg, d_model, dp, tp, batch, d_out=d_out, sites=sites).total + host
    need = total()
    if need <= free:
        return None
    tp = next((t for t in (2, 4, 8, 16, 32, 64, 128, 256)
               if t > cfg.tp and total(t) <= free), None)
    batch = cfg.batch_size // 2
    while batch >= dp and total(batch=batch) > free:
        batch //= 2
    ways = ([f"latents sharded over tp={tp} devices (--tp {tp})"] if tp else []) + (
        [f"--batch-size {batch}"] if batch >= dp else [])
    return (f"needs {gib(need)} per device ({device.type}), {gib(free)} is free: it would fit "
            f"with {' or '.join(ways) if ways else 'nothing this model knows of'} "
            "(actstore train --plan shows the parts)")
