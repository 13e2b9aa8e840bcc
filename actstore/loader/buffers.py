"""Window buffers reused from one window (and epoch) to the next.

A window is hundreds of MB. Allocated afresh each time, its memory comes straight from the
kernel (malloc maps allocations this large), and every page faults and is zeroed on first
write: that cost the loader about a fifth of its CPU time on a bf16 store
(benchmarks/README.md, `fp8_store.py`). A pool hands out views of arrays it keeps; when a
view and everything made from it (torch tensors, batch slices a consumer still holds) are
gone, its array goes back to the pool, so a batch kept by the consumer is never overwritten.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray


class BufferPool:
    """Arrays of `capacity` rows, by row shape and dtype; at most `keep` of each kind are
    kept while unused (the rest are freed)."""

    def __init__(self, capacity: int, keep: int) -> None:
        self.capacity, self.keep = capacity, keep
        self._free: dict[tuple[tuple[int, ...], np.dtype[Any]], list[NDArray[Any]]] = {}

    def take(self, rows: int, row_shape: tuple[int, ...], dtype: DTypeLike) -> NDArray[Any]:
        """A (rows, *row_shape) array whose contents are undefined (a pooled array's old
        rows, or fresh memory)."""
        if rows > self.capacity:
            raise ValueError(f"{rows} rows asked of a pool of {self.capacity}-row buffers")
        key = (tuple(row_shape), np.dtype(dtype))
        free = self._free.setdefault(key, [])
        try:
            base = free.pop()  # atomic under the GIL: no lock, so a release from a
        except IndexError:     # finaliser, in any thread, can never wait on one
            base = np.empty((self.capacity, *row_shape), key[1])
        view = base[:rows]
        weakref.finalize(view, self._release, free, base)
        return view

    def _release(self, free: list[NDArray[Any]], base: NDArray[Any]) -> None:
        if len(free) < self.keep:
            free.append(base)

    def kept(self) -> int:
        """Unused arrays held now (all kinds)."""
        return sum(len(f) for f in self._free.values())
