"""Finding 6: request bodies are limited while they arrive (`--aibridge-max-body-size`), chunked or
not: 413 in the provider's shape, the upload cut off, nothing forwarded, memory bounded, and the
request still ends as one (failed) interception."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, clean_env, latest_ended_after, provider_env, settled_count
from tests.security.tripwire import RawResponse, Tripwire, read_response

pytestmark = pytest.mark.e2e

LIMIT = 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.fixture(scope="module")
def small(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("body")
    gw = Gateway(workdir, clean_env(**provider_env(upstream.url), CODER_AIBRIDGE_MAX_BODY_SIZE="1MiB"))
    gw.user_key = gw.create_key("alice")  # type: ignore[attr-defined]
    gw.start()
    yield gw
    gw.stop()


def rss_kib(gw: Gateway) -> int:
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def upload_chunked(port: int, head: bytes, total: int) -> tuple[RawResponse, int]:
    """Send a chunked body of `total` bytes until the gateway answers; returns its answer and the bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with sock:
        sock.sendall(head + b"transfer-encoding: chunked\r\n\r\n")
        sent = 0
        piece = b"%x\r\n" % CHUNK + b"a" * CHUNK + b"\r\n"
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the gateway answered: stop uploading
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += CHUNK
        else:
            sock.sendall(b"0\r\n\r\n")
        return read_response(sock, "POST"), sent


def head(path: str, key: str, host: str = "127.0.0.1") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\n"
            f"content-type: application/json\r\n").encode()


def test_a_50mb_chunked_body_is_cut_off_with_413(small: Gateway, upstream: FakeUpstream, tripwire: Tripwire) -> None:
    before, rss_before = settled_count(small), rss_kib(small)
    response, sent = upload_chunked(small.port, head("/api/v2/aibridge/anthropic/v1/messages",
                                                     small.user_key, f"127.0.0.1:{tripwire.port}"),  # type: ignore[attr-defined]
                                    50 * 1024 * 1024)
    assert response.status == 413
    error = orjson.loads(response.body)
    assert error["type"] == "error" and error["error"]["type"] == "request_too_large"
    assert "exceeds the gateway's limit of 1048576 bytes" in error["error"]["message"]
    assert sent < 10 * 1024 * 1024  # cut off soon after the limit, not read to the end
    assert rss_kib(small) - rss_before < 20 * 1024  # nothing like 50 MB was held
    assert upstream.requests == [] and tripwire.received == b""
    row = latest_ended_after(small, before)
    assert row["status"] == "failed" and "exceeds the gateway's limit" in row["metadata"]["error"]


def test_a_declared_length_over_the_limit_is_refused_before_the_body(small: Gateway, upstream: FakeUpstream) -> None:
    with socket.create_connection(("127.0.0.1", small.port), timeout=10) as sock:
        sock.sendall(head("/api/v2/aibridge/openai/v1/chat/completions", small.user_key)  # type: ignore[attr-defined]
                     + f"content-length: {50 * 1024 * 1024}\r\n\r\n".encode() + b"{")
        response = read_response(sock, "POST")
    assert response.status == 413
    assert orjson.loads(response.body)["error"]["type"] == "request_too_large"
    assert upstream.requests == []


def test_pass_through_routes_are_limited_too(small: Gateway, upstream: FakeUpstream) -> None:
    response, _ = upload_chunked(small.port, head("/api/v2/aibridge/anthropic/v1/messages/count_tokens",
                                                  small.user_key), 8 * 1024 * 1024)  # type: ignore[attr-defined]
    assert response.status == 413
    assert upstream.requests == []


def test_bodies_under_the_limit_are_forwarded_chunked_or_not(small: Gateway, upstream: FakeUpstream) -> None:
    key: str = small.user_key  # type: ignore[attr-defined]
    text = "a" * (LIMIT - 4096)
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), CHUNK):
            yield body[i:i + CHUNK]

    for content in (body, chunks()):
        response = httpx.post(f"{small.url}/api/v2/aibridge/anthropic/v1/messages", content=content,
                              headers={"x-api-key": key, "content-type": "application/json"}, trust_env=False)
        assert response.status_code in (200, 400), response.text
    assert len(upstream.requests) == 2
    assert upstream.requests[0].body == body
    # The fake was reached with the chunked request: the gateway took the whole body and forwarded it.
    assert upstream.requests[1].headers.get("transfer-encoding") == "chunked"


def test_a_refused_request_is_answered_before_its_body(gateway: Gateway, upstream: FakeUpstream) -> None:
    """No key needed to make the gateway buffer 30 MB: a request refused at its headers is answered at once,
    its body is dropped as it arrives (not held), and the connection closes after it."""
    rss_before = rss_kib(gateway)
    size = 30 * 1024 * 1024  # under the default 32 MiB limit
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head("/api/v2/aibridge/anthropic/v1/messages", "aigw_00000000_not-a-key")
                     + f"content-length: {size}\r\n\r\n".encode())
        response = read_response(sock, "POST")  # before: waited for the whole body (timeout)
        assert response.status == 401
        assert response.headers["connection"] == "close"
        assert orjson.loads(response.body)["error"]["type"] == "authentication_error"
        piece = b"a" * (1024 * 1024)
        for _ in range(size // len(piece)):
            sock.sendall(piece)  # read and dropped
        assert sock.recv(1) == b""  # closed once the body ended
    assert rss_kib(gateway) - rss_before < 15 * 1024  # nothing like 30 MB was held
    assert upstream.requests == []


def test_a_refused_request_gets_no_100_continue(gateway: Gateway, upstream: FakeUpstream) -> None:
    for path in ("/api/v2/aibridge/anthropic/v1/messages", "/api/v2/aibridge/nowhere/v1/messages",
                 "/api/v2/aibridge/anthropic/v1/../v1/messages"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(head(path, "aigw_00000000_not-a-key") + b"expect: 100-continue\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            response = read_response(sock, "POST")
        assert response.status in (400, 401, 404), response  # the refusal, not "100 Continue"
        assert response.headers["connection"] == "close"
    assert upstream.requests == []


def test_an_admitted_request_still_gets_100_continue(gateway: Gateway, upstream: FakeUpstream) -> None:
    body = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}'
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head("/api/v2/aibridge/anthropic/v1/messages", gateway.user_key)  # type: ignore[attr-defined]
                     + f"expect: 100-continue\r\ncontent-length: {len(body)}\r\n\r\n".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        assert read_response(sock, "POST").status == 200
    assert len(upstream.requests) == 1
