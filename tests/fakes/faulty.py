"""Upstreams that fail below HTTP: a listener that never accepts, a port nobody listens on."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.gateway_process import free_port


class Blackhole:
    """A TCP listener whose accept queue is full and never drained: the kernel drops further SYNs,
    so a connect hangs (what a dead host or a filtering firewall looks like to a client)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(4):  # fill the queue; the connects past its size time out, which is the point
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except OSError:
                s.close()
                break
            self.fillers.append(s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hangs(self) -> bool:
        """True when a new connect really hangs (the test cannot show a timeout otherwise)."""
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", self.port))
            except TimeoutError:
                return True
            except OSError:
                return False
            return False

    def close(self) -> None:
        for s in self.fillers:
            with contextlib.suppress(OSError):
                s.close()
        self.listener.close()


class Mute:
    """Accepts connections and never says a word: a TLS handshake with it never completes."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.listener.accept()[0])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        for s in self.accepted:
            with contextlib.suppress(OSError):
                s.close()
        self.listener.close()


def refused_url() -> str:
    """An address where nothing listens: connects are refused at once."""
    return f"http://127.0.0.1:{free_port()}"
