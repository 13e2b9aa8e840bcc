"""Counts what a loader really decoded inside a timed interval, so a benchmark can show that
it streamed (rows decoded while it was timed) rather than timed data decoded beforehand."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from actstore.loader.loader import Loader


class DecodeProbe:
    """When each chunk run was decoded by the loaders of this process, and how many rows."""

    def __init__(self) -> None:
        self.decoded: list[tuple[float, int]] = []

    def rows_between(self, t0: float, t1: float) -> int:
        """Rows whose decoding finished inside [t0, t1]."""
        return sum(n for t, n in self.decoded if t0 <= t <= t1)


@contextmanager
def probe_decoding() -> Iterator[DecodeProbe]:
    """Record every `Loader._read_scattered` call (one chunk run) while the block runs."""
    probe = DecodeProbe()
    real = Loader._read_scattered

    def recorded(self: Loader, hook: str, start: int, stop: int, *args: Any) -> None:
        real(self, hook, start, stop, *args)
        if args[0].ndim == 2:  # activations, not an 8-bit hook's row scales
            probe.decoded.append((time.perf_counter(), stop - start))
    Loader._read_scattered = recorded  # type: ignore[method-assign,assignment]
    try:
        yield probe
    finally:
        Loader._read_scattered = real  # type: ignore[method-assign]
