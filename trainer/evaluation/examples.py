"""What a latent means: its top-activating rows, how often it fires, how strongly.

One streaming pass over a dictionary's non-zero codes keeps, per latent, the `top` largest
activations and their store rows, a uniform random sample of `sample` of its firings (the
browser's quantile bands), a count of firings and a histogram of log10 activations.
Candidates are buffered and merged by one sort when the buffer is full, so memory stays
O(latents · (top + sample) + buffer) whatever the number of rows; the merge keeps exactly what
one sort of every activation would. The sample is the `sample` firings of largest hash of
(row, latent): a uniform sample without replacement that no split of the rows (batches,
ranks) changes.

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
    sample_rows: torch.Tensor | None = None
    """(latents, sample) int64 store rows of a uniform sample of each latent's firings, sorted
    by value, largest first, padded with -1 (None: no sample was asked for)."""
    sample_values: torch.Tensor | None = None
    """(latents, sample) float32 activations of those rows."""


def row_hash(rows: torch.Tensor, cols: torch.Tensor, latents: int) -> torch.Tensor:
    """A pseudo-random int64 per (row, latent) (splitmix64's finaliser, wrapping multiplies)."""
    x = rows * latents + cols
    x = (x ^ (x >> 30)) * -4658895280553007687  # 0xbf58476d1ce4e5b9 as a signed int64
    x = (x ^ (x >> 27)) * -7723592293110705685  # 0x94d049bb133111eb
    return x ^ (x >> 31)


def _keep_largest(cols: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                  values: torch.Tensor, *, latents: int, top: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, top) rows and values of the `top` largest keys of each latent (ties to the
    earlier row), padded with -1 / 0."""
    order = torch.argsort(rows, stable=True)
    order = order[torch.argsort(keys[order], descending=True, stable=True)]
    order = order[torch.argsort(cols[order], stable=True)]
    cols, rows, values = cols[order], rows[order], values[order]
    first = torch.searchsorted(cols, torch.arange(latents))
    rank = torch.arange(len(cols)) - first[cols]
    take = rank < top
    out_rows = torch.full((latents, top), -1, dtype=torch.int64)
    out_values = torch.zeros(latents, top)
    out_rows[cols[take], rank[take]] = rows[take]
    out_values[cols[take], rank[take]] = values[take]
    return out_rows, out_values


#: Latents below which a sample's merge sorts one packed key: (latent, 43 bits of the hash).
_PACKED = 1 << 20


def _keep_hashed(cols: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, *,
                 latents: int, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_keep_largest` keyed by `row_hash`, in one sort of a packed int64 (a third of the
    three stable sorts; hashes equal in their 43 high bits, ~2^-43 a pair, tie arbitrarily)."""
    if latents >= _PACKED:
        return _keep_largest(cols, row_hash(rows, cols, latents), rows, values,
                             latents=latents, top=top)
    low = (1 << 43) - 1
    key, order = torch.sort((cols << 43) | (low - ((row_hash(rows, cols, latents) >> 21) & low)))
    sorted_cols = key >> 43
    first = torch.searchsorted(sorted_cols, torch.arange(latents))
    rank = torch.arange(len(key)) - first[sorted_cols]
    take = torch.nonzero(rank < top).squeeze(1)  # few: gather only these
    lat, slot, kept = sorted_cols[take], rank[take], order[take]
    out_rows = torch.full((latents, top), -1, dtype=torch.int64)
    out_values = torch.zeros(latents, top)
    out_rows[lat, slot] = rows[kept]
    out_values[lat, slot] = values[kept]
    return out_rows, out_values


class TopCollector:
    """Accumulate codes batch by batch into a `TopActivations`."""

    def __init__(self, latents: int, top: int, buffer: int = 1 << 22, sample: int = 0) -> None:
        self.latents, self.top, self.buffer, self.sample = latents, top, buffer, sample
        self.rows = torch.full((latents, top), -1, dtype=torch.int64)
        self.values = torch.zeros(latents, top)
        self.sample_rows = torch.full((latents, sample), -1, dtype=torch.int64)
        self.sample_values = torch.zeros(latents, sample)
        self.fired = torch.zeros(latents, dtype=torch.int64)
        self.histogram = torch.zeros(latents, len(HIST_EDGES) - 1, dtype=torch.int64)
        self.tokens = 0
        # candidates (cols, values, rows) for the top lists and for the samples: the same
        # tensors from `add`, each part's own list from `absorb`
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending_sample: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
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
        if self.sample:
            self._pending_sample.append((cols, values, rows))
        self._held += len(cols)
        if self._held >= self.buffer:
            self._merge()

    def _merge(self) -> None:
        """Fold the buffered candidates into the per-latent top lists and samples (one
        lexicographic sort each: by latent, then by value or hash descending, then row: ties
        go to the earlier row, as in one pass over the rows in order, however the rows were
        split among collectors)."""
        tops, samples = self._pending, self._pending_sample
        self._pending, self._pending_sample, self._held = [], [], 0
        for kept_rows, kept_values, width, hashed, pending in (
                (self.rows, self.values, self.top, False, tops),
                (self.sample_rows, self.sample_values, self.sample, True, samples)):
            if not width or not pending:
                continue
            keep = kept_rows >= 0
            lat = torch.arange(self.latents).unsqueeze(1).expand_as(kept_rows)
            cols = torch.cat([lat[keep], *(p[0] for p in pending)])
            values = torch.cat([kept_values[keep], *(p[1] for p in pending)])
            rows = torch.cat([kept_rows[keep], *(p[2] for p in pending)])
            new_rows, new_values = (
                _keep_hashed(cols, rows, values, latents=self.latents, top=width) if hashed
                else _keep_largest(cols, values, rows, values, latents=self.latents, top=width))
            kept_rows.copy_(new_rows)
            kept_values.copy_(new_values)

    def absorb(self, part: TopActivations) -> None:
        """Fold in another collector's result (a rank's share of the rows)."""
        for rows, values, pending in ((part.rows, part.values, self._pending),
                                      (part.sample_rows, part.sample_values,
                                       self._pending_sample)):
            if rows is None or values is None or (pending is self._pending_sample
                                                  and not self.sample):
                continue
            keep = rows >= 0
            lat = torch.arange(self.latents).unsqueeze(1).expand_as(rows)
            pending.append((lat[keep], values[keep], rows[keep]))
            self._held += int(keep.sum())
        self.fired += part.fired
        self.histogram += part.histogram
        self.tokens += part.tokens

    def result(self) -> TopActivations:
        self._merge()
        sample = self.sample_values.argsort(dim=1, descending=True, stable=True)
        return TopActivations(self.rows.clone(), self.values.clone(), self.fired.clone(),
                              self.histogram.clone(), self.tokens,
                              self.sample_rows.gather(1, sample) if self.sample else None,
                              self.sample_values.gather(1, sample) if self.sample else None)


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
