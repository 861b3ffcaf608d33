"""Helpers for the request-path security tests: a tripwire listener and raw HTTP exchanges.

The tripwire stands for "any host the gateway must not reach": it records every byte it
receives (a refusal must leave it at zero) and answers like a server so that a request
wrongly relayed to it completes instead of hanging the test.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

TRIPWIRE_BODY = b"tripwire reached"


@dataclass
class Tripwire:
    host: str = "127.0.0.1"
    chunks: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server((self.host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def received(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)

    def reset(self) -> None:
        with self.lock:
            self.chunks.clear()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        seen = b""
        answered = False
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.chunks.append(data)
                seen += data
                if not answered and b"\r\n\r\n" in seen:
                    answered = True
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                                 + str(len(TRIPWIRE_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + TRIPWIRE_BODY)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(sock: socket.socket | ssl.SSLSocket, method: str = "GET") -> RawResponse:
    response = http.client.HTTPResponse(sock, method=method)  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def exchange(port: int, data: bytes, method: str = "GET", timeout: float = 10) -> RawResponse:
    """Send raw bytes (anything httpx would refuse to produce) and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, method)


def basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"aigw:{secret}".encode()).decode()


def tunnel(port: int, host: str, secret: str, ca: Path, timeout: float = 10) -> ssl.SSLSocket:
    """A CONNECT tunnel through the gateway's proxy, TLS-decrypted by the gateway (trusting its CA)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
                 f"Proxy-Authorization: {basic(secret)}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(sock, server_hostname=host)


def gateway_ca(workdir: Path) -> Path:
    return workdir / "certs" / "mitmproxy-ca-cert.pem"
