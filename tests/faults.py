"""Faults made for real on 127.0.0.1: a TCP proxy in front of a server that can go down."""

from __future__ import annotations

import contextlib
import socket
import threading


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
