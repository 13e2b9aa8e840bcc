"""Window buffers reused from one window (and epoch) to the next.

A window is hundreds of MB. Allocated afresh each time, its memory comes straight from the
kernel (malloc maps allocations this large), and every page faults and is zeroed on first
write (benchmarks/README.md, `fp8_store.py`). A pool hands out arrays over memory it keeps;
when such an array and everything made from it (numpy views, torch tensors, batch slices a
consumer still holds) are gone, the memory goes back to the pool, so a batch kept by the
consumer is never overwritten.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray


class _Lease:
    """The owner of a handed-out buffer's memory as numpy sees it: an array made from a lease
    has it as its `.base`, and so does every numpy view of that array (numpy points a view's
    base at the first owner that is not an array), while torch tensors keep the array. So the
    lease lives exactly as long as anything that can reach the memory."""

    __slots__ = ("__array_interface__", "__weakref__", "buffer")

    def __init__(self, buffer: NDArray[Any], rows: int) -> None:
        self.buffer = buffer
        self.__array_interface__ = buffer[:rows].__array_interface__


class BufferPool:
    """Arrays of `capacity` rows, by row shape and dtype; at most `keep` of each kind are
    kept while unused (the rest are freed). A loader's pool keeps them between epochs, for
    the next; they are freed with the loader."""

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
        lease = _Lease(base, rows)
        weakref.finalize(lease, self._release, free, base)
        leased: NDArray[Any] = np.asarray(lease)
        return leased

    def _release(self, free: list[NDArray[Any]], base: NDArray[Any]) -> None:
        if len(free) < self.keep:
            free.append(base)

    def kept(self) -> int:
        """Unused arrays held now (all kinds)."""
        return sum(len(f) for f in self._free.values())
