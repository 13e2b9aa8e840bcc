"""Counts what a loader really read inside a timed interval, so a benchmark can show that it
streamed (windows decoded while it was timed) rather than measured data decoded beforehand."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from actstore.loader import Loader


class WindowProbe:
    """Start times of every window the loaders of this process begin to read."""

    def __init__(self) -> None:
        self.started: list[float] = []

    def between(self, t0: float, t1: float) -> int:
        """Windows whose reading began inside [t0, t1]."""
        return sum(t0 <= t <= t1 for t in self.started)


@contextmanager
def probe_windows() -> Iterator[WindowProbe]:
    """Record `Loader._read_window` calls (one per window) while the block runs."""
    probe = WindowProbe()
    real = Loader._read_window

    def recorded(self: Loader, *args: Any, **kwargs: Any) -> Any:
        probe.started.append(time.perf_counter())
        return real(self, *args, **kwargs)
    Loader._read_window = recorded  # type: ignore[method-assign]
    try:
        yield probe
    finally:
        Loader._read_window = real  # type: ignore[method-assign]
