"""A dictionary whose latents are split over the tp ranks of a mesh.

Each tp rank holds a contiguous slice of the latents: their encoder columns, decoder rows,
b_enc, JumpReLU thresholds, dead-latent counters and (through its optimiser) their Adam state;
b_dec and BatchTopK's threshold are replicated. The tp ranks of a dp row see the same batch.

    TopK       each rank's top k of its slice (the sparse tiles), all-gathered: (B, tp·k)
               candidates, the global top k of them, each rank keeps the winners it holds
    BatchTopK  the same with the batch's top k·B (its threshold is global too)
    AuxK       the same over the dead latents, k_aux = min(aux_k, dead latents of all ranks)
    ReLU, JumpReLU  dense on the slice; only the sums need all ranks

Every rank decodes its own winners; the partial reconstructions are summed over tp
(`sum_over_shards`), and the input's gradient is summed back (`copy_to_shards`), so every
parameter gets exactly the unsharded gradient of its slice. Gradients are averaged over dp only
(DDP over the dp group). Tested against the unsharded dictionary (tests/test_sharding.py).
"""

from __future__ import annotations

import math

import torch

from trainer import distributed
from trainer.dictionaries import (
    SELECTED,
    DictionaryConfig,
    Kernel,
    Output,
    SparseDictionary,
    selection_counts,
    smallest_positive,
)
from trainer.kernels import (
    Above,
    Accumulator,
    BatchTopK,
    RowTopK,
    Selection,
    decode,
    from_sorted,
    select,
    selected,
    to_sparse,
)
from trainer.kernels.jumprelu import jump_relu, step
from trainer.sharding.mesh import Mesh
from trainer.sharding.ops import copy_to_shards, gather, sum_over_shards


class ShardedDictionary(SparseDictionary):
    """The latents `mesh.shard(cfg.latents)` of the dictionary `cfg`."""

    def __init__(self, cfg: DictionaryConfig, generator: torch.Generator | None,
                 kernel: Kernel, mesh: Mesh) -> None:
        if kernel == "dense" and cfg.arch in SELECTED:
            raise ValueError(f"--arch {cfg.arch} shards its latents with the sparse step only; "
                             "drop --kernel dense or --tp")
        start, stop = mesh.shard(cfg.latents)
        if stop <= start:
            raise ValueError(f"--latents {cfg.latents} leaves tp rank {mesh.tp_rank} of "
                             f"{mesh.tp} without latents; use at least "
                             f"{(mesh.tp - 1) * -(-cfg.latents // mesh.tp) + 1} or a smaller "
                             "--tp")
        super().__init__(cfg, generator, kernel, shard=(start, stop))
        self.mesh = mesh
        self.replica_group = mesh.dp_group

    def over_shards(self, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce(t, "sum", self.mesh.tp_group)

    def clip_grad_norm_(self, max_norm: float) -> None:
        """As torch's, with the norm over every shard (b_dec, replicated, counted once)."""
        grads = {name: p.grad for name, p in self.named_parameters() if p.grad is not None}
        local = [torch.linalg.vector_norm(g).square() for name, g in grads.items()
                 if name != "b_dec"]
        total = self.over_shards(torch.stack(local).sum() if local
                                 else self.b_dec.new_zeros(()))
        if grads.get("b_dec") is not None:
            total = total + torch.linalg.vector_norm(grads["b_dec"]).square()
        coef = (max_norm / (total.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads.values():
            g.mul_(coef)

    def forward(self, x: torch.Tensor) -> Output:
        xc = copy_to_shards(x - self.b_dec, self.mesh.tp_group)
        return self._selected(x, xc) if self.cfg.arch in SELECTED else self._dense(x, xc)

    def _dense(self, x: torch.Tensor, xc: torch.Tensor) -> Output:
        cfg, group = self.cfg, self.mesh.tp_group
        pre = xc @ self.W_enc + self.b_enc
        z = (torch.relu(pre) if cfg.arch == "relu"
             else jump_relu(pre, self.log_threshold.exp(), cfg.jump_bandwidth))
        x_hat = sum_over_shards(z @ self.W_dec, group) + self.b_dec
        terms = {"mse": ((x_hat - x) ** 2).sum(-1).mean()}
        if cfg.arch == "relu":
            terms["l1_loss"] = cfg.l1 * sum_over_shards(z.abs().sum(-1), group).mean()
        else:
            active = step(pre, self.log_threshold.exp(), cfg.jump_bandwidth).sum(-1)
            terms["l0_loss"] = cfg.l0 * sum_over_shards(active, group).mean()
        fired = (z > 0).sum(0)
        self._track(fired, x.shape[0])
        loss = torch.stack(list(terms.values())).sum()
        return Output(x_hat, z, loss, {k: v.detach() for k, v in terms.items()}, fired)

    def _selected(self, x: torch.Tensor, xc: torch.Tensor) -> Output:
        cfg, batch, group = self.cfg, x.shape[0], self.mesh.tp_group
        k = cfg.k or 1
        dead = self.dead_mask()
        k_aux = min(cfg.aux_k or 2 * k, int(self.over_shards(dead.sum())))
        main: Accumulator = (RowTopK(batch, k, x.device) if cfg.arch == "topk"
                             else BatchTopK(batch, self.local_latents, k * batch, x.device))
        accs = [main] + ([RowTopK(batch, k_aux, x.device, dead)] if k_aux else [])
        local = select(xc.detach(), self.W_enc, self.b_enc, accs)
        sels = [self._row_winners(local[0], k) if cfg.arch == "topk"
                else self._batch_winners(local[0], k * batch)]
        if k_aux:
            sels.append(self._row_winners(local[1], k_aux))
        codes = [torch.relu(v) for v in selected(xc, self.W_enc, self.b_enc, sels)]
        partial = decode(sels, codes, self.W_dec)
        x_hat = sum_over_shards(partial[0], group) + self.b_dec
        terms = {"mse": ((x_hat - x) ** 2).sum(-1).mean(), "aux_loss": x.new_zeros(())}
        if k_aux:
            aux_err = sum_over_shards(partial[1], group) - (x - x_hat).detach()
            terms["aux_loss"] = cfg.aux_coef * (aux_err ** 2).sum(-1).mean()
        fired = selection_counts(sels[0].cols, codes[0].detach() > 0, self.local_latents)
        if cfg.arch == "batchtopk":  # the minimum over all ranks is taken by the update
            self._update_threshold(smallest_positive(codes[0].detach()))
        self._track(fired, batch)
        return Output(x_hat, to_sparse(sels[0], codes[0], self.local_latents),
                      terms["mse"] + terms["aux_loss"],
                      {name: v.detach() for name, v in terms.items()}, fired)

    def _row_winners(self, local: Selection, k: int) -> Selection:
        """Each row's global top k from every shard's candidates; the ones held here."""
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
        """The batch's global top m (positive) from every shard's; the ones held here."""
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

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference over the shards (every tp rank calls it on the same x); `fired` is this
        shard's latents."""
        cfg, flat = self.cfg, x.flatten(0, -2)
        xc = flat - self.b_dec
        if cfg.arch in SELECTED:
            acc: Accumulator = (RowTopK(len(flat), cfg.k or 1, x.device) if cfg.arch == "topk"
                                else Above(len(flat), self.local_latents, self.threshold))
            sel, = select(xc, self.W_enc, self.b_enc, [acc])
            if cfg.arch == "topk":
                sel = self._row_winners(sel, cfg.k or 1)
            codes = torch.relu(sel.values)
            fired = torch.zeros(self.local_latents, dtype=torch.bool, device=x.device)
            fired[sel.cols[codes > 0]] = True
            partial = decode([sel], [codes], self.W_dec)[0]
        else:
            pre = xc @ self.W_enc + self.b_enc
            z = (torch.relu(pre) if cfg.arch == "relu"
                 else jump_relu(pre, self.log_threshold.exp(), cfg.jump_bandwidth))
            partial, fired = z @ self.W_dec, (z > 0).any(0)
        x_hat = distributed.all_reduce(partial, "sum", self.mesh.tp_group) + self.b_dec
        return x_hat.view_as(x), fired
