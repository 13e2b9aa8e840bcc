"""Faults made for real: a TCP proxy on 127.0.0.1 in front of a server that can go down, and
a store read through a filesystem whose range requests are ignored."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, Literal

from actstore import ActivationStore
from actstore.store.location import Location


class IgnoresRanges:
    """A filesystem that answers range reads with the whole object, as a server (a proxy, an
    emulator) that ignores the Range header does: `suffix` ranges (`bytes=-N`, how a shard's
    index is read), the `other` ranges (a run of chunks), or `all`. Whole reads are sound."""

    def __init__(self, fs: Any, which: Literal["suffix", "other", "all"]) -> None:
        self.fs, self.which = fs, which

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kw: Any) -> Any:
        suffix = start is not None and start < 0 and end is None
        ranged = start is not None or end is not None
        if ranged and (self.which == "all" or (self.which == "suffix") == suffix):
            return self.fs.cat_file(path)
        return self.fs.cat_file(path, start=start, end=end, **kw)


def ignoring_ranges(store: ActivationStore, which: Literal["suffix", "other", "all"]
                    ) -> ActivationStore:
    """`store` read through `IgnoresRanges`."""
    loc = store.location
    return ActivationStore(Location(loc.url, IgnoresRanges(loc.fs, which), loc.root),
                           store.spec, store.layout)


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to a target; while `down`, connections are cut at once (an
    outage of the service, as the client sees it)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.down = target, False
        self.cut = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def outage(self, on: bool) -> None:
        self.down = on
        if on:
            with self._lock:
                for s in self._open:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                self._open.clear()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.down:
                self.cut += 1
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
