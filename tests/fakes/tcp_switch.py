"""A loopback TCP relay that a test switches off and on: a network path to a service (the lake's S3 store)
that goes down and comes back while the service itself, and what it holds, stays up."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST, as a dead path does


class TcpSwitch:
    """Relays every connection on `port` to `target`. `off()` resets the open connections and every new
    one at once (connection refused/reset, not a hang); `on()` relays again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self.up = True
        self.refused = 0  # connections reset while off: proof the client really tried
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def off(self) -> None:
        with self._lock:
            self.up = False
            cut, self._open = self._open, set()
        for s in cut:
            _reset(s)

    def on(self) -> None:
        with self._lock:
            self.up = True

    def close(self) -> None:
        self.off()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if not self.up:
                    self.refused += 1
                    _reset(client)
                    continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                if not self.up:  # switched off while connecting
                    _reset(client)
                    _reset(server)
                    continue
                self._open.update((client, server))
            ends = [2]  # the pair closes when both directions ended
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, ends), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, ends: list[int]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # a half-close travels on
        except OSError:  # reset by off() or by a peer: the other direction ends too
            _reset(src)
            _reset(dst)
        with self._lock:
            ends[0] -= 1
            if ends[0]:
                return
            self._open.discard(src)
            self._open.discard(dst)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv (close alone would not)
    with contextlib.suppress(OSError):
        s.close()
