"""What a latent means: its top-activating rows, how often it fires, how strongly.

One streaming pass over a dictionary's non-zero codes keeps, per latent, the `top` largest
activations and their store rows, a count of firings and a histogram of log10 activations.
Candidates are buffered and merged by one sort when the buffer is full, so memory stays
O(latents · top + buffer) whatever the number of rows; the merge keeps exactly what one sort
of every activation would.

The rows then become text through the store's row index and contexts table: the context's
tokens around the row's position, the activating token marked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from actstore.store.activation_store import ActivationStore
from trainer.dictionary.kernels import Selection

#: Histogram bins of log10(activation): 10^-3 .. 10^3 in 24 steps (clamped at both ends).
HIST_EDGES = torch.linspace(-3.0, 3.0, 25)


@dataclass(frozen=True)
class TopActivations:
    """Per-latent summaries of a pass: `rows`/`values` sorted by value, largest first, padded
    with row -1 / value 0 where a latent fired fewer than `top` times."""

    rows: torch.Tensor
    """(latents, top) int64 store rows."""
    values: torch.Tensor
    """(latents, top) float32 activations."""
    fired: torch.Tensor
    """(latents,) int64 rows on which each latent was non-zero."""
    histogram: torch.Tensor
    """(latents, bins) int64 counts of log10(activation) in `HIST_EDGES`."""
    tokens: int
    """Rows seen."""


class TopCollector:
    """Accumulate codes batch by batch into a `TopActivations`."""

    def __init__(self, latents: int, top: int, buffer: int = 1 << 22) -> None:
        self.latents, self.top, self.buffer = latents, top, buffer
        self.rows = torch.full((latents, top), -1, dtype=torch.int64)
        self.values = torch.zeros(latents, top)
        self.fired = torch.zeros(latents, dtype=torch.int64)
        self.histogram = torch.zeros(latents, len(HIST_EDGES) - 1, dtype=torch.int64)
        self.tokens = 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._held = 0

    def add(self, codes: Selection, store_rows: torch.Tensor) -> None:
        """Non-zero codes of one batch; `store_rows[i]` is the store row of batch row i."""
        cols, values = codes.cols.cpu(), codes.values.detach().float().cpu()
        rows = store_rows.cpu()[codes.rows.cpu()]
        self.tokens += len(store_rows)
        self.fired += torch.bincount(cols, minlength=self.latents)
        bins = torch.bucketize(values.clamp_min(1e-30).log10(), HIST_EDGES[1:-1])
        self.histogram.view(-1).index_add_(0, cols * self.histogram.shape[1] + bins,
                                           torch.ones_like(bins))
        self._pending.append((cols, values, rows))
        self._held += len(cols)
        if self._held >= self.buffer:
            self._merge()

    def _merge(self) -> None:
        """Fold the buffered candidates into the per-latent top lists (one lexicographic
        sort: by latent, then by value descending)."""
        if not self._pending:
            return
        keep = self.rows >= 0
        lat = torch.arange(self.latents).unsqueeze(1).expand_as(self.rows)
        cols = torch.cat([lat[keep], *(p[0] for p in self._pending)])
        values = torch.cat([self.values[keep], *(p[1] for p in self._pending)])
        rows = torch.cat([self.rows[keep], *(p[2] for p in self._pending)])
        self._pending, self._held = [], 0
        # by latent, then value (largest first), then row: ties go to the earlier row, as in
        # one pass over the rows in order, however the rows were split among collectors
        order = torch.argsort(rows, stable=True)
        order = order[torch.argsort(values[order], descending=True, stable=True)]
        order = order[torch.argsort(cols[order], stable=True)]
        cols, values, rows = cols[order], values[order], rows[order]
        first = torch.searchsorted(cols, torch.arange(self.latents))
        rank = torch.arange(len(cols)) - first[cols]
        take = rank < self.top
        self.rows.fill_(-1)
        self.values.zero_()
        self.rows[cols[take], rank[take]] = rows[take]
        self.values[cols[take], rank[take]] = values[take]

    def absorb(self, part: TopActivations) -> None:
        """Fold in another collector's result (a rank's share of the rows)."""
        keep = part.rows >= 0
        lat = torch.arange(self.latents).unsqueeze(1).expand_as(part.rows)
        self._pending.append((lat[keep], part.values[keep], part.rows[keep]))
        self._held += int(keep.sum())
        self.fired += part.fired
        self.histogram += part.histogram
        self.tokens += part.tokens

    def result(self) -> TopActivations:
        self._merge()
        return TopActivations(self.rows.clone(), self.values.clone(), self.fired.clone(),
                              self.histogram.clone(), self.tokens)


@dataclass(frozen=True)
class Example:
    """One activating row as text."""

    row: int
    """Store row."""
    value: float
    """The latent's activation there."""
    context: int
    """context_id of the row."""
    position: int
    """Token position in that context."""
    left: str
    """Text of the tokens before the marked one (within the window)."""
    token: str
    """The activating token."""
    right: str
    """Text of the tokens after it (within the window)."""


Decode = Callable[[Sequence[int]], str]


def token_ids_text(ids: Sequence[int]) -> str:
    """The fallback decoder: token ids as numbers (stores without a tokenizer, e.g. toy)."""
    return " ".join(f"#{i}" for i in ids)


def render(store: ActivationStore, rows: Sequence[int], values: Sequence[float],
           decode: Decode = token_ids_text, window: int = 12) -> list[Example]:
    """The given store rows as text: `window` tokens either side, the row's token apart."""
    if not rows:
        return []
    index = store.read_index(min(rows), max(rows) + 1)
    lo = min(rows)
    table = store.read_contexts(["context_id", "tokens"])
    where = {int(c): i for i, c in enumerate(table.column("context_id").to_numpy())}
    tokens = table.column("tokens")
    out = []
    for row, value in zip(rows, values, strict=True):
        ctx, pos = int(index.context[row - lo]), int(index.position[row - lo])
        ids: list[int] = tokens[where[ctx]].as_py() if ctx in where else []
        if pos >= len(ids):  # no contexts table (toy data): the row is all there is
            out.append(Example(int(row), float(value), ctx, pos, "", f"(row {row})", ""))
            continue
        left, token, right = _split(decode, ids, pos, window)
        out.append(Example(int(row), float(value), ctx, pos, left, token, right))
    return out


def _split(decode: Decode, ids: Sequence[int], pos: int, window: int) -> tuple[str, str, str]:
    """The window's text cut around token `pos`. Decoded as prefixes of one span, so the
    tokenizer's own spacing survives (WordPiece joins with spaces, BPE tokens carry theirs);
    pieces decoded apart where a prefix does not extend the shorter one."""
    a, b = max(0, pos - window), pos + 1 + window
    left, upto, whole = decode(ids[a:pos]), decode(ids[a:pos + 1]), decode(ids[a:b])
    if upto.startswith(left) and whole.startswith(upto):
        token = upto[len(left):]
        bare = token.lstrip()  # the space before a word belongs to the left, not the mark
        return left + token[:len(token) - len(bare)], bare, whole[len(upto):]
    return left, decode(ids[pos:pos + 1]), decode(ids[pos + 1:b])


def sample_latents(top: TopActivations, count: int, seed: int = 0) -> list[int]:
    """Latents to show: a seeded sample of those that fired (all of them when few)."""
    live = np.flatnonzero(top.fired.numpy() > 0)
    if len(live) <= count:
        return live.tolist()
    return sorted(np.random.default_rng(seed).choice(live, count, replace=False).tolist())
