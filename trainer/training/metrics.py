"""Training metrics per dictionary, summed on the device over a logging interval (no host sync
per step) and reduced across ranks when a line is written.

    mse   squared error summed over d_model, mean over tokens (the loss term, normalised space)
    fvu   fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean_batch(x)||^2
    l0    mean number of active latents per token
    dead  latents that fired on none of the last `dead_after_tokens` tokens (all ranks)
    silent  latents that fired on none of this logging interval's tokens (all ranks)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.dictionary.dictionaries import Output, SparseDictionary
from trainer.parallel import distributed
from trainer.parallel.mesh import Mesh
from trainer.parallel.ops import gather_uneven

_SUMS = ("sse", "ssdev", "l0", "loss", "tokens")


class Meter:
    """Interval sums for each member of an ensemble, plus per-latent firing counts over the
    whole run (for the latent-density histogram). Under latent slicing the per-token sums are
    the same on the tp ranks of a dp row and are reduced over dp only; per-latent counts are
    reduced over dp and then summed (or, for densities, gathered) over tp."""

    def __init__(self, members: Sequence[SparseDictionary], device: torch.device,
                 mesh: Mesh | None = None) -> None:
        self.members = list(members)
        self.device = device
        self.dp_group = mesh.dp_group if mesh is not None else None
        self.tp_group = mesh.tp_group if mesh is not None and mesh.tp > 1 else None
        self.sums = torch.zeros(len(members), len(_SUMS), dtype=torch.float64, device=device)
        self.terms: list[dict[str, torch.Tensor]] = [{} for _ in members]
        # (latents,), a CLT's (latents, layers): as the member's own counters
        self.fired = [torch.zeros_like(m.tokens_since_fired, device=device) for m in members]
        self.interval_fired = [torch.zeros_like(f) for f in self.fired]
        self.tokens_total = 0
        self.interval_tokens = 0  # this rank's; put into the sums only when they are reduced

    @torch.no_grad()
    def add(self, x: torch.Tensor, outs: Sequence[Output]) -> None:
        x = x.float()
        ssdev = (x - x.mean(0)).pow(2).sum().double()
        n = len(x)
        for i, out in enumerate(outs):
            fired = out.fired  # counted by the dictionary from its selections
            # the dictionary's own "mse" term is the per-token squared error: sse = mse * n
            self.sums[i, :4] += torch.stack([out.terms["mse"].double() * n, ssdev,
                                             fired.sum().double(), out.loss.detach().double() * n])
            for name, value in out.terms.items():
                if name != "mse":
                    self.terms[i][name] = self.terms[i].get(name, 0) + value.double() * n
            self.fired[i] += fired
            self.interval_fired[i] += fired
        self.tokens_total += n
        self.interval_tokens += n

    def flush(self) -> list[dict[str, float]]:
        """Every member's metrics since the last flush (over all ranks); resets the sums.
        Called on every rank (it reduces)."""
        self.sums[:, 4] = float(self.interval_tokens)
        sums = distributed.all_reduce(self.sums.clone(), "sum", self.dp_group)
        sums[:, 2] = distributed.all_reduce(sums[:, 2].clone(), "sum", self.tp_group)  # l0
        sums = sums.cpu()
        lines = []
        for i, member in enumerate(self.members):
            s = dict(zip(_SUMS, sums[i].tolist(), strict=True))
            tokens = max(s["tokens"], 1.0)
            silent = distributed.all_reduce(self.interval_fired[i].clone(), "sum",
                                            self.dp_group) == 0
            line = {"mse": s["sse"] / tokens, "fvu": s["sse"] / max(s["ssdev"], 1e-30),
                    "l0": s["l0"] / tokens, "loss": s["loss"] / tokens,
                    "dead": int(member.over_slices(member.dead_mask().sum())),
                    "silent": int(member.over_slices(silent.sum()))}
            for name, total in sorted(self.terms[i].items()):
                if name in line:  # a loss term must never overwrite the metric it is named like
                    raise RuntimeError(f"loss term {name!r} collides with a metric")
                summed = distributed.all_reduce(torch.as_tensor(total).clone(), "sum",
                                                self.dp_group)
                line[name] = float(summed) / tokens
            lines.append(line)
        self.sums.zero_()
        for f in self.interval_fired:
            f.zero_()
        self.interval_tokens = 0
        self.terms = [{} for _ in self.members]
        return lines

    def densities(self) -> list[torch.Tensor]:
        """Per member, the fraction of training tokens on which each latent fired (all ranks;
        under latent slicing the whole dictionary's, on every rank)."""
        tokens = distributed.all_reduce(torch.tensor(float(self.tokens_total)), "sum",
                                        self.dp_group)
        out = []
        for f in self.fired:
            counts = distributed.all_reduce(f.clone(), "sum", self.dp_group)
            if self.tp_group is not None:
                counts = torch.cat(list(gather_uneven(counts, self.tp_group)))
            out.append(counts.cpu().double() / max(float(tokens), 1.0))
        return out
