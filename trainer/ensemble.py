"""Several dictionaries trained on the same stream of batches in one pass (the seed paper's way
of sweeping an L1 coefficient, a size or k): the data is read and moved once, and each member
keeps its own optimiser, schedule and metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainer.dictionaries import DictionaryConfig, Output, SparseDictionary

OptimizerFactory = Callable[[SparseDictionary], torch.optim.Optimizer]


def adam(lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999)) -> OptimizerFactory:
    return lambda sae: torch.optim.Adam(sae.parameters(), lr=lr, betas=betas)


class Ensemble:
    """Members trained side by side; `step(x)` does one optimiser step for each."""

    def __init__(self, configs: Sequence[DictionaryConfig], make_optimizer: OptimizerFactory,
                 *, seed: int = 0, grad_clip: float | None = 1.0) -> None:
        if not configs:
            raise ValueError("an ensemble needs at least one dictionary")
        widths = {c.d_model for c in configs}
        if len(widths) != 1:
            raise ValueError(f"members must share d_model, got {sorted(widths)}")
        self.members = [SparseDictionary(c, torch.Generator().manual_seed(seed + i))
                        for i, c in enumerate(configs)]
        self.optimizers = [make_optimizer(m) for m in self.members]
        self.grad_clip = grad_clip

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Ensemble:
        for m in self.members:
            m.to(device=device, dtype=dtype)
        return self

    def step(self, x: torch.Tensor) -> list[Output]:
        """One training step of every member on the same batch."""
        return [train_step(m, opt, x, self.grad_clip)
                for m, opt in zip(self.members, self.optimizers, strict=True)]


def train_step(sae: SparseDictionary, opt: torch.optim.Optimizer, x: torch.Tensor,
               grad_clip: float | None) -> Output:
    """Forward, backward, decoder-constrained step."""
    opt.zero_grad(set_to_none=True)
    out: Output = sae(x)
    out.loss.backward()  # type: ignore[no-untyped-call]
    sae.remove_parallel_grad()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
    opt.step()
    sae.normalize_decoder()
    return out
