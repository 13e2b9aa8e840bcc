"""A dictionary whose latents are split over the tp ranks of a mesh.

Each tp rank holds a contiguous slice of the latents: their encoder columns, decoder rows,
b_enc, JumpReLU thresholds, dead-latent counters and (through its optimiser) their Adam state;
b_dec and BatchTopK's threshold are replicated. The tp ranks of a dp row see the same batch.

    TopK       each rank's top k of its slice (the sparse tiles), all-gathered: (B, tp·k)
               candidates, the global top k of them, each rank keeps the winners it holds
    BatchTopK  the same with the batch's top k·B (its threshold is global too)
    AuxK       the same over the dead latents, k_aux = min(aux_k, dead latents of all ranks)
    ReLU, JumpReLU  dense on the slice; only the sums need all ranks

The passes are SparseDictionary's own; this class fills in its three hooks. Every rank decodes
its own winners (`winners`); the partial reconstructions and penalties are summed over tp
(`over_slices`: `sum_over_slices`), and the input's gradient is summed back (`into_slices`:
`copy_to_slices`), so every parameter gets exactly the unsliced gradient of its slice.
Gradients are averaged over dp only (DDP over the dp group). Tested against the unsliced
dictionary (tests/trainer/dictionary/test_slices.py). A cross-layer transcoder's slices
(`SlicedCLT`) are the same latents of every layer, through the same three hooks.
"""

from __future__ import annotations

import math

import torch

from trainer.dictionary.clt import CrossLayerTranscoder
from trainer.dictionary.dictionaries import SELECTED, DictionaryConfig, Kernel, SparseDictionary
from trainer.dictionary.kernels import Selection, from_sorted
from trainer.parallel.mesh import Mesh
from trainer.parallel.ops import copy_to_slices, gather, sum_over_slices

#: Parameters every tp rank holds whole (the others are sliced by latent).
REPLICATED = ("b_dec", "W_skip")


class SlicedDictionary(SparseDictionary):
    """The latents `mesh.latent_slice(cfg.latents)` of the dictionary `cfg`."""

    def __init__(self, cfg: DictionaryConfig, generator: torch.Generator | None,
                 kernel: Kernel, mesh: Mesh) -> None:
        if kernel == "dense" and cfg.arch in SELECTED:
            raise ValueError(f"--arch {cfg.arch} shards its latents with the sparse step only; "
                             "drop --kernel dense or --tp")
        start, stop = mesh.latent_slice(cfg.latents)
        if stop <= start:
            raise ValueError(f"--latents {cfg.latents} leaves tp rank {mesh.tp_rank} of "
                             f"{mesh.tp} without latents; use at least "
                             f"{(mesh.tp - 1) * -(-cfg.latents // mesh.tp) + 1} or a smaller "
                             "--tp")
        super().__init__(cfg, generator, kernel, latent_slice=(start, stop))
        self.mesh = mesh
        self.replica_group = mesh.dp_group

    def into_slices(self, xc: torch.Tensor) -> torch.Tensor:
        return copy_to_slices(xc, self.mesh.tp_group)

    def over_slices(self, t: torch.Tensor) -> torch.Tensor:
        return sum_over_slices(t, self.mesh.tp_group)

    def winners(self, found: Selection, count: int, by_row: bool) -> Selection:
        return (self._row_winners(found, count) if by_row
                else self._batch_winners(found, count))

    def clip_grad_norm_(self, max_norm: float) -> None:
        """As torch's, with the norm over every slice (b_dec and W_skip, replicated, counted
        once)."""
        grads = {name: p.grad for name, p in self.named_parameters() if p.grad is not None}
        local = [torch.linalg.vector_norm(g).square() for name, g in grads.items()
                 if name not in REPLICATED]
        total = self.over_slices(torch.stack(local).sum() if local
                                 else self.b_dec.new_zeros(()))
        for name in REPLICATED:
            if grads.get(name) is not None:
                total = total + torch.linalg.vector_norm(grads[name]).square()
        coef = (max_norm / (total.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads.values():
            g.mul_(coef)

    def _row_winners(self, local: Selection, k: int) -> Selection:
        """Each row's global top k from every slice's candidates; the ones held here."""
        batch = len(local.offsets)
        values = local.values.view(batch, len(local.values) // batch)
        cols = local.cols.view(batch, -1 if len(local.cols) else 0) + self.start
        short = k - values.shape[1]  # a slice narrower than k, or with few dead latents
        values = torch.cat([values, values.new_full((batch, short), -math.inf)], 1)
        cols = torch.cat([cols, cols.new_full((batch, short), -1)], 1)
        every_v = gather(values, self.mesh.tp_group).permute(1, 0, 2).reshape(batch, -1)
        every_c = gather(cols, self.mesh.tp_group).permute(1, 0, 2).reshape(batch, -1)
        top = torch.topk(every_v, k, dim=1)
        won = every_c.gather(1, top.indices)
        mine = (won >= self.start) & (won < self.stop)
        rows = torch.arange(batch, device=won.device).unsqueeze(1).expand(batch, k)
        return from_sorted(rows[mine], won[mine] - self.start, top.values[mine], batch)

    def _batch_winners(self, local: Selection, m: int) -> Selection:
        """The batch's global top m (positive) from every slice's; the ones held here."""
        n, batch = self.cfg.latents, len(local.offsets)
        short = m - len(local.values)
        values = torch.cat([local.values, local.values.new_full((short,), -math.inf)])
        flat = torch.cat([local.rows * n + local.cols + self.start,
                          local.cols.new_full((short,), -1)])
        every_v = gather(values, self.mesh.tp_group).flatten()
        every_f = gather(flat, self.mesh.tp_group).flatten()
        top = torch.topk(every_v, m)
        won = every_f[top.indices]
        mine = (won >= 0) & (won % n >= self.start) & (won % n < self.stop)
        won, order = torch.sort(won[mine])
        return from_sorted(won // n, won % n - self.start, top.values[mine][order], batch)


class SlicedCLT(SlicedDictionary, CrossLayerTranscoder):
    """The latents `mesh.latent_slice(cfg.latents)` of every layer of the CLT `cfg`."""


def build(cfg: DictionaryConfig, generator: torch.Generator | None, kernel: Kernel = "auto",
          mesh: Mesh | None = None) -> SparseDictionary:
    """The module for `cfg`: an SAE or transcoder, or a cross-layer transcoder; sliced over
    the mesh's tp ranks when tp > 1."""
    sliced = mesh is not None and mesh.tp > 1
    if cfg.kind == "clt":
        return (SlicedCLT(cfg, generator, kernel, mesh) if sliced and mesh is not None
                else CrossLayerTranscoder(cfg, generator, kernel))
    return (SlicedDictionary(cfg, generator, kernel, mesh) if sliced and mesh is not None
            else SparseDictionary(cfg, generator, kernel))
