"""Which latents each token keeps, found one block of latents at a time.

The dense step materialises the (batch, latents) pre-activations; at 1M latents and a batch of
4096 one such tensor is 16 GiB. Here the product `xc @ W_enc + b_enc` is taken one block of
latent columns at a time (a tile of at most `BLOCK_ELEMENTS`), each tile is reduced into a
running selection and dropped, so the extra memory is O(batch·block + selections):

    row top-k      each token's k largest pre-activations             (topk, AuxK)
    batch top-k    the batch's m largest positive pre-activations     (batchtopk, training)
    above          every pre-activation above a threshold             (batchtopk, inference)

A selection is a list of (row, column, pre-activation) triples sorted by row, with the offsets
of each row's first entry: the layout `torch.nn.functional.embedding_bag` decodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import torch

#: Pre-activations in one (batch, latent block) tile: 32 M elements, 128 MB in float32. Wide
#: enough that torch.topk runs near its per-element speed (narrow rows cost it more per element:
#: benchmarks/README.md, section `large_dictionary.py`).
BLOCK_ELEMENTS = 1 << 25


class Selection(NamedTuple):
    """Entries of a (batch, latents) code matrix, sorted by row."""

    rows: torch.Tensor
    """(m,) int64, ascending."""
    cols: torch.Tensor
    """(m,) int64 latent ids."""
    values: torch.Tensor
    """(m,) float32 pre-activations at (rows, cols): not yet ReLU'd."""
    offsets: torch.Tensor
    """(batch,) int64: where each row's entries start (embedding_bag's offsets)."""


def from_sorted(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                batch: int) -> Selection:
    """A Selection of entries already sorted by row."""
    offsets = torch.searchsorted(rows, torch.arange(batch, device=rows.device))
    return Selection(rows, cols, values, offsets)


class Accumulator(Protocol):
    """Reduces the tiles of one pass into a selection."""

    def wants(self, start: int, stop: int) -> bool:
        """Whether the tile of latent columns [start, stop) can hold any of its entries."""

    def add(self, tile: torch.Tensor, start: int) -> None:
        """Take the tile of latent columns [start, start + tile.shape[1])."""

    def result(self) -> Selection:
        """The selection of everything added."""


class RowTopK:
    """Each row's k largest entries, merged tile by tile; with a mask, only among the masked-in
    columns (AuxK: the dead latents), which are gathered out of each tile first, so the cost
    follows their number rather than the tile's width."""

    def __init__(self, batch: int, k: int, device: torch.device,
                 mask: torch.Tensor | None = None) -> None:
        self.k = k
        self.columns = None if mask is None else torch.nonzero(mask).flatten()
        # the same ids on the host, to find each tile's share without a device sync
        self.host_columns = None if self.columns is None else self.columns.cpu()
        self.values = torch.empty(batch, 0, device=device)
        self.cols = torch.empty(batch, 0, dtype=torch.long, device=device)

    def _span(self, start: int, stop: int) -> tuple[int, int]:
        assert self.host_columns is not None
        bounds = torch.searchsorted(self.host_columns, torch.tensor([start, stop]))
        return int(bounds[0]), int(bounds[1])

    def wants(self, start: int, stop: int) -> bool:
        if self.host_columns is None:
            return True
        first, last = self._span(start, stop)
        return last > first

    def add(self, tile: torch.Tensor, start: int) -> None:
        if self.columns is None:
            top = torch.topk(tile, min(self.k, tile.shape[1]), dim=1)
            cols = top.indices + start
        else:
            first, last = self._span(start, start + tile.shape[1])
            ids = self.columns[first:last]
            top = torch.topk(tile.index_select(1, ids - start), min(self.k, last - first), dim=1)
            cols = ids[top.indices]
        values = torch.cat([self.values, top.values], 1)
        cols = torch.cat([self.cols, cols], 1)
        if values.shape[1] > self.k:
            best = torch.topk(values, self.k, dim=1)
            values, cols = best.values, cols.gather(1, best.indices)
        self.values, self.cols = values, cols

    def result(self) -> Selection:
        batch, k = self.values.shape
        rows = torch.arange(batch, device=self.values.device).repeat_interleave(k)
        offsets = torch.arange(batch, device=rows.device) * k
        return Selection(rows, self.cols.flatten(), self.values.flatten(), offsets)


class _EveryTile:
    """An accumulator that reads every tile."""

    def wants(self, start: int, stop: int) -> bool:  # noqa: ARG002
        return True


class BatchTopK(_EveryTile):
    """The batch's m largest positive entries (BatchTopK keeps k per token on average)."""

    def __init__(self, batch: int, latents: int, m: int, device: torch.device) -> None:
        self.batch, self.latents, self.m = batch, latents, m
        self.values = torch.empty(0, device=device)
        self.flat = torch.empty(0, dtype=torch.long, device=device)  # row * latents + col

    def add(self, tile: torch.Tensor, start: int) -> None:
        width = tile.shape[1]
        top = torch.topk(tile.flatten(), min(self.m, tile.numel()))
        keep = top.values > 0  # only positive pre-activations are codes (ReLU)
        where = top.indices[keep]
        flat = where // width * self.latents + where % width + start
        values, flat = torch.cat([self.values, top.values[keep]]), torch.cat([self.flat, flat])
        if len(values) > self.m:
            best = torch.topk(values, self.m)
            values, flat = best.values, flat[best.indices]
        self.values, self.flat = values, flat

    def result(self) -> Selection:
        flat, order = torch.sort(self.flat)
        return from_sorted(flat // self.latents, flat % self.latents, self.values[order],
                           self.batch)


class Above(_EveryTile):
    """Every entry above a threshold (batchtopk at inference: its learned threshold)."""

    def __init__(self, batch: int, latents: int, threshold: torch.Tensor) -> None:
        self.batch, self.latents, self.threshold = batch, latents, threshold.clamp_min(0)
        self.values: list[torch.Tensor] = []
        self.flat: list[torch.Tensor] = []

    def add(self, tile: torch.Tensor, start: int) -> None:
        rows, cols = torch.nonzero(tile > self.threshold, as_tuple=True)
        self.values.append(tile[rows, cols])
        self.flat.append(rows * self.latents + cols + start)

    def result(self) -> Selection:
        flat, order = torch.sort(torch.cat(self.flat))
        return from_sorted(flat // self.latents, flat % self.latents,
                           torch.cat(self.values)[order], self.batch)


def blocks(latents: int, batch: int, block: int | None = None) -> Iterator[tuple[int, int]]:
    """[start, stop) column ranges of the tiles (`block` columns, or BLOCK_ELEMENTS' worth)."""
    width = block or max(1, BLOCK_ELEMENTS // max(1, batch))
    for start in range(0, latents, width):
        yield start, min(latents, start + width)


@torch.no_grad()
def select(xc: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
           accumulators: list[Accumulator], block: int | None = None) -> list[Selection]:
    """One pass over the latent blocks of `xc @ w_enc + b_enc`, feeding every accumulator
    the tiles it wants (AuxK's only those holding a dead latent)."""
    for start, stop in blocks(w_enc.shape[1], xc.shape[0], block):
        users = [a for a in accumulators if a.wants(start, stop)]
        if not users:
            continue
        tile = torch.addmm(b_enc[start:stop], xc, w_enc[:, start:stop])
        tile = tile.to(torch.promote_types(tile.dtype, torch.float32))  # bf16 under autocast
        for acc in users:
            acc.add(tile, start)
    return [a.result() for a in accumulators]
