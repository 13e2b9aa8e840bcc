"""`HeadWatch` (actstore.generate.executors.head_watch): a head that answers is never lost; one
that stops answering is, after the grace period and a run of failed probes, not before."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from actstore.generate.executors import head_watch
from actstore.generate.executors.head_watch import HeadWatch


class Recorded(HeadWatch):
    """Records the loss (and the probes) instead of ending the process."""

    def __init__(self, address: str, grace_s: float) -> None:
        self.probes: list[bool] = []
        self.lost_at: float | None = None
        self.done = threading.Event()
        super().__init__(address, grace_s=grace_s, every_s=0.02)

    def reachable(self) -> bool:
        up = super().reachable()
        self.probes.append(up)
        return up

    def lost(self) -> None:
        self.lost_at = time.monotonic()
        self.done.set()


def test_a_head_that_answers_is_kept_and_one_that_stops_is_lost_after_the_grace() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    watch = Recorded(f"127.0.0.1:{port}", grace_s=0.3)
    try:
        while len(watch.probes) < 10:  # as many probes as it takes, however slow the machine
            time.sleep(0.02)
        assert all(watch.probes)
        assert watch.lost_at is None
        server.close()
        closed = time.monotonic()
        assert watch.done.wait(timeout=120)
    finally:
        watch.close()
        server.close()
    assert watch.lost_at is not None
    assert watch.lost_at - closed >= 0.3
    down = watch.probes[watch.probes.index(False):]
    assert len(down) >= head_watch.PROBES
    assert not any(down)


def test_one_failed_probe_past_the_grace_is_not_a_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch thread left unscheduled longer than the grace (a saturated machine) sees two
    failures far apart: that alone ends nothing; the run of failed probes does."""
    monkeypatch.setattr(head_watch, "PROBES", 1000)
    watch = Recorded("127.0.0.1:1", grace_s=0.0)  # nothing listens on port 1
    try:
        while len(watch.probes) < 20:
            time.sleep(0.02)
        assert watch.lost_at is None
    finally:
        watch.close()
