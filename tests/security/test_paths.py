"""Finding 4: pass-through path traversal. Paths are checked before routing: dot segments (raw or
percent-encoded, any case, double-encoded), backslashes and empty segments get 400 in the provider's
shape and are never forwarded — on gateway routes and inside the proxy alike."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway
from tests.security.tripwire import Tripwire, basic, exchange, gateway_ca, read_response, tunnel

pytestmark = pytest.mark.e2e

A = "/api/v2/aibridge/anthropic"
O = "/api/v2/aibridge/openai"  # noqa: E741 - the OpenAI instance, as A is Anthropic's
TRAVERSALS = [
    # The reproductions.
    f"{A}/v1/models/../messages",
    f"{A}/v1/models/%2e%2e/messages",
    f"{A}/api/event_logging/../../v1/messages",
    f"{O}/v1/models/../chat/completions",
    # Variants: case, double and triple encoding, encoded slashes, backslashes, `;`, empty and `.` segments.
    f"{A}/v1/models/%2E%2E/messages",
    f"{A}/v1/models/%2e./messages",
    f"{A}/v1/models/%252e%252e/messages",
    f"{A}/v1/models/%25252e%25252e/messages",
    f"{A}/v1/models%2f..%2fmessages",
    f"{A}/v1/models%2F%2E%2E%2Fmessages",
    f"{A}/v1/models/..%2fmessages",
    f"{A}/v1/models\\..\\messages",
    f"{A}/v1/models/..%5cmessages",
    f"{A}/v1/models/..;/messages",
    f"{A}/v1/models/./../messages",
    f"{A}/v1//messages",
    f"{A}//v1/messages",
    f"{O}/v1/responses/./x",
    f"{O}/v1/models/%EF%BC%8E%EF%BC%8E/chat/completions",
    # Overlong UTF-8 dots and IIS-style %u escapes (servers that decode them see `..`).
    f"{A}/v1/models/%c0%ae%c0%ae/messages",
    f"{A}/v1/models/%C0%AE./messages",
    f"{A}/v1/models/%e0%80%ae%e0%80%ae/messages",
    f"{A}/v1/models/%25c0%25ae%25c0%25ae/messages",
    f"{A}/v1/models/%u002e%u002e/messages",
    f"{A}/v1/models/%U002E%U002E%u2215messages",
    f"{A}/v1/models/%25u002e%25u002e/messages",
    f"{O}/v1/models/%ff/chat/completions",
]


def post(port: int, path: str, key: str, host: str = "127.0.0.1") -> bytes:
    body = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}'
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_on_gateway_routes(gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire, path: str) -> None:
    response = exchange(gateway.port, post(gateway.port, path, gateway.user_key,  # type: ignore[attr-defined]
                                           f"127.0.0.1:{tripwire.port}"), "POST")
    assert response.status == 400, (path, response)
    error = orjson.loads(response.body)
    if path.startswith(A):
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        assert error["error"]["type"] == "invalid_request_error" and "param" in error["error"]  # OpenAI's shape
    assert "the request path contains" in response.body.decode()
    assert upstream.requests == []
    assert tripwire.received == b""


@pytest.mark.parametrize("path", ["/v1/models/../messages", "/v1/models/%2e%2e/messages",
                                  "/api/event_logging/../../v1/messages"])
def test_traversal_through_the_proxy(gateway: Gateway, upstream: FakeUpstream, path: str) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    plain = exchange(gateway.port, f"POST http://api.anthropic.com{path} HTTP/1.1\r\nHost: api.anthropic.com\r\n"
                     f"Proxy-Authorization: {basic(key)}\r\ncontent-length: 2\r\n\r\n{{}}".encode(), "POST")
    assert plain.status == 400
    with tunnel(gateway.port, "api.anthropic.com", key, gateway_ca(gateway.workdir)) as tls:
        tls.sendall(post(gateway.port, path, key, "api.anthropic.com"))
        decrypted = read_response(tls, "POST")
    assert decrypted.status == 400
    assert orjson.loads(decrypted.body)["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


def test_passthrough_routes_are_exact_allowlists(gateway: Gateway, upstream: FakeUpstream) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    refused = ["/v1/modelsX", "/v1/models-messages", "/api/event_loggingX/x", "/v1/messages/x"]
    for path in refused:
        response = exchange(gateway.port, f"GET {A}{path} HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n\r\n".encode())
        assert response.status == 404, path
    assert upstream.requests == []
    # A prefix ends at a segment boundary; what is under it is forwarded as it is.
    for path in ["/v1/models", "/v1/models/", "/v1/models/claude-sonnet-4-5", "/v1/models/a.b..c"]:
        response = exchange(gateway.port, f"GET {A}{path} HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n\r\n".encode())
        assert response.status in (200, 404) and b"the request path" not in response.body, path  # the fake's answer
    assert [r.path for r in upstream.requests] == ["/v1/models", "/v1/models/", "/v1/models/claude-sonnet-4-5",
                                                   "/v1/models/a.b..c"]
