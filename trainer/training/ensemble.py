"""Several dictionaries trained on the same stream of batches in one pass (the seed paper's way
of sweeping an L1 coefficient, a size or k): the data is read and moved once, and each member
keeps its own optimiser, schedule and metrics.

Data-parallel: `distribute()` wraps each member in DDP, which averages gradients across ranks
during backward. Buffer broadcast is off: the dictionaries keep their buffers (dead-latent
counters, the batchtopk threshold) equal on all ranks themselves, from every rank's batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from trainer.dictionary.dictionaries import DictionaryConfig, Kernel, Output, SparseDictionary
from trainer.dictionary.slices import build
from trainer.parallel.mesh import Mesh

OptimizerFactory = Callable[[SparseDictionary], torch.optim.Optimizer]
Schedule = Callable[[int], float]


def adam(lr: float | Callable[[DictionaryConfig], float] = 1e-4,
         betas: tuple[float, float] = (0.9, 0.999)) -> OptimizerFactory:
    """Adam for each member, at `lr` or at `lr(member config)` (a rate per dictionary size)."""
    def make(sae: SparseDictionary) -> torch.optim.Optimizer:
        rate = lr(sae.cfg) if callable(lr) else lr
        # fused: one kernel per step and no parameter-sized temporaries (far faster than the
        # default on CPU: benchmarks/README.md, section `large_dictionary.py`); parameters
        # must be on the device already
        fused = next(sae.parameters()).device.type in ("cpu", "cuda")
        return torch.optim.Adam(sae.parameters(), lr=rate, betas=betas, fused=fused)
    return make


def warmup_decay(steps: int, warmup: int, decay_start: float) -> Schedule:
    """Learning-rate factor: linear warmup from 0 over `warmup` steps, flat, then linear decay
    to 0 over the steps after `decay_start * steps`."""
    decay_from = int(decay_start * steps)

    def factor(step: int) -> float:
        up = min(1.0, (step + 1) / warmup) if warmup else 1.0
        down = 1.0 if step < decay_from else max(0.0, (steps - step) / max(1, steps - decay_from))
        return up * down
    return factor


class Ensemble:
    """Members trained side by side; `step(x)` does one optimiser step for each."""

    def __init__(self, configs: Sequence[DictionaryConfig], make_optimizer: OptimizerFactory,
                 *, seed: int = 0, grad_clip: float | None = 1.0,
                 schedule: Schedule | None = None, kernel: Kernel = "auto",
                 mesh: Mesh | None = None) -> None:
        """`mesh`: with tp > 1, each member holds this rank's slice of its latents."""
        if not configs:
            raise ValueError("an ensemble needs at least one dictionary")
        widths = {c.d_model for c in configs}
        if len(widths) != 1:
            raise ValueError(f"members must share d_model, got {sorted(widths)}")
        self.mesh = mesh
        self.members = [build(c, torch.Generator().manual_seed(seed + i), kernel, mesh)
                        for i, c in enumerate(configs)]
        self.make_optimizer, self.schedule = make_optimizer, schedule
        self.grad_clip = grad_clip
        self._forwards: list[Callable[..., Output]] = list(self.members)
        self._reset_optimizers()

    def _reset_optimizers(self) -> None:
        self.optimizers = [self.make_optimizer(m) for m in self.members]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, self.schedule)
                           for o in self.optimizers] if self.schedule else []

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Ensemble:
        """Move the members (before `distribute` and before any step: the optimisers are
        rebuilt on the moved parameters)."""
        for m in self.members:
            m.to(device=device, dtype=dtype)
        self._reset_optimizers()
        return self

    def distribute(self, device: torch.device) -> None:
        """Average gradients across the data-parallel ranks (DDP, one per member, over the
        mesh's dp group: the ranks holding the same latents)."""
        group = self.mesh.dp_group if self.mesh is not None else None
        if self.mesh is not None and self.mesh.dp == 1:
            return  # latents sharded, one replica: nothing to average
        ids = [device.index] if device.type == "cuda" else None
        # Buffers are equal on all ranks at wrap time; only the per-forward sync must be off.
        # (torch >= 2.12 names it forward_sync_buffers; broadcast_buffers before.)
        no_sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})
        self._forwards = [DistributedDataParallel(m, device_ids=ids, process_group=group,
                                                  **no_sync) for m in self.members]

    def step(self, x: torch.Tensor, autocast: bool = False,
             y: torch.Tensor | None = None) -> list[Output]:
        """One training step of every member on the same batch (`y`: a transcoder's
        target)."""
        outs = [train_step(m, f, opt, x, self.grad_clip, autocast=autocast, y=y)
                for m, f, opt in zip(self.members, self._forwards, self.optimizers, strict=True)]
        for s in self.schedulers:
            s.step()
        return outs


def train_step(sae: SparseDictionary, forward: Callable[..., Output],
               opt: torch.optim.Optimizer, x: torch.Tensor, grad_clip: float | None, *,
               autocast: bool = False, y: torch.Tensor | None = None) -> Output:
    """Forward (through DDP when distributed), backward, decoder-constrained step."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out: Output = forward(x) if y is None else forward(x, y)
    out.loss.backward()  # type: ignore[no-untyped-call]
    sae.remove_parallel_grad()
    if grad_clip is not None:
        sae.clip_grad_norm_(grad_clip)
    opt.step()
    sae.normalize_decoder()
    return out
