"""A driver that loses the Ray head node stops within seconds, in one line that says a rerun
resumes. Without it Ray's own client retries the head for 60 s and then ends the process with
its own message ("Failed to connect to GCS within 60 seconds"), and calls made meanwhile can
block until then.

`HeadWatch` probes the head's port (the GCS) from a thread: a refused or timed-out connection
every probe for `grace_s`, and at least `PROBES` probes in a row, means the head is gone. A
busy head still accepts connections (the kernel completes the handshake), so load alone does
not look like a loss; and a watch thread that a saturated machine left unscheduled for longer
than the grace still needs that many failed probes, not two failures far apart. On a loss the
driver exits at once (`os._exit`): the calls into Ray it might still be in would hang, and
what it leaves behind is what any killed driver leaves (its lock's lease expires, its
unfinished shards are not committed), which the rerun takes over.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

#: Failed probes in a row, besides the grace period, before the head counts as lost.
PROBES = 3


class HeadWatch:
    """Started after joining a cluster at `host:port`; `close()` when the job is done."""

    def __init__(self, address: str, grace_s: float = 10.0, every_s: float = 1.0) -> None:
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.address, self.grace_s, self.every_s = address, grace_s, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="actstore-head-watch")
        self._thread.start()

    def reachable(self) -> bool:
        try:
            socket.create_connection(self.target, timeout=2).close()
            return True
        except OSError:
            return False

    def _watch(self) -> None:
        since: float | None = None  # when the head stopped answering
        failed = 0  # probes in a row that found it unreachable
        while not self._stop.wait(self.every_s):
            if self.reachable():
                since, failed = None, 0
                continue
            now = time.monotonic()
            since, failed = (now if since is None else since), failed + 1
            if now - since >= self.grace_s and failed >= PROBES and not self._stop.is_set():
                self.lost()
                return

    def lost(self) -> None:
        print(f"actstore generate: error: lost the Ray head node at {self.address} "
              f"(unreachable for {self.grace_s:g}s): the job stopped. Restart the cluster "
              "and rerun the same command to resume", file=sys.stderr, flush=True)
        os._exit(2)  # as run_command's one-line errors

    def close(self) -> None:
        self._stop.set()
