"""Fuzzing a live gateway: random methods, paths (encoded dots and slashes, unicode, raw bytes), header
names and values (arbitrary bytes) and credentials, on gateway routes and as proxy requests.

The invariant, checked after every example: nothing reaches the fake upstream without a valid gateway
key (or a BYOK pair), nothing that reaches it has a path that could resolve elsewhere, and nothing at
all reaches the tripwire that every request names as its Host.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.chain.guard import path_problem
from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway
from tests.security.tripwire import Tripwire, basic, exchange

pytestmark = pytest.mark.e2e

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SEGMENTS = st.sampled_from([
    ".", "..", "%2e", "%2E", "%2e%2E", "%252e%252e", "%2f", "%2F..%2F", "%5c", "\\", "", "..;", "x;y",
    "%00", "%0d%0a", "%EF%BC%8E%EF%BC%8E", "caf%C3%A9", "v1", "messages", "models", "count_tokens", "chat",
    "completions", "responses", "api", "event_logging", "conversations",
]) | st.text(max_size=6).map(lambda t: quote(t, safe="")) | st.text(max_size=4)
INSTANCES = st.sampled_from(["anthropic", "openai", "copilot", "dead", "multi", "nope", "keys", "query", "admin"])
METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]) | st.binary(
    min_size=1, max_size=8)
HEADERS = st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=40)), max_size=6)
AUTH = st.sampled_from(["none", "valid", "invalid", "byok", "query", "proxy-only", "byok-empty", "byok-twice",
                        "byok-extra"])
BODIES = st.sampled_from([b"", b"{}", b'{"model":"m","max_tokens":1,"messages":[]}', b'{"model":"m","input":"x"}'])
PROXY_HOSTS = st.sampled_from(["api.anthropic.com", "api.openai.com", "chatgpt.com", "127.0.0.1:{trip}",
                               "8.8.8.8:22", "169.254.169.254", "[::1]:{trip}", "localhost:{trip}"])


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


def credentials(auth: str, key: str) -> tuple[bytes, bytes]:
    """(header lines, query) for a credential kind."""
    if auth == "valid":
        return f"x-api-key: {key}\r\nauthorization: Bearer {key}\r\n".encode(), b""
    if auth == "invalid":
        return b"x-api-key: aigw_00000000_notavalidkeyatall\r\n", b""
    if auth == "byok":
        return f"x-aigw-token: {key}\r\nauthorization: Bearer sk-user-own-key-0000\r\n".encode(), b""
    if auth == "byok-empty":
        return f"x-aigw-token: \r\nx-api-key: {key}\r\nauthorization: Bearer {key}\r\n".encode(), b""
    if auth == "byok-twice":
        return f"x-aigw-token: {key}\r\nx-api-key: {key}\r\n".encode(), b""
    if auth == "byok-extra":
        return (f"x-aigw-token: {key}\r\nx-api-key: sk-user-own-key-0000\r\n"
                f"authorization: Bearer {key}\r\n").encode(), b""
    if auth == "query":
        return b"", f"key={key}&api_key={key}".encode()
    if auth == "proxy-only":
        return f"Proxy-Authorization: {basic(key)}\r\n".encode(), b""
    return b"", b""


def send(port: int, data: bytes) -> None:
    try:
        exchange(port, data, timeout=10)
    except (OSError, http.client.HTTPException):
        pass  # refused at the protocol level: the connection was closed


def check(upstream: FakeUpstream, tripwire: Tripwire, before: int, authorized: bool, key: str) -> None:
    assert tripwire.received == b""
    new = upstream.requests[before:]
    if not authorized:
        assert new == [], [r.path for r in new]
    for seen in new:
        assert path_problem(seen.path) is None, seen.path
        # The gateway key never goes upstream, whichever header or parameter carried it.
        assert key not in seen.path and all(key not in value for value in seen.headers.values()), seen.headers


@FUZZ
@given(method=METHODS, instance=INSTANCES, segments=st.lists(SEGMENTS, max_size=5), raw=st.binary(max_size=3),
       headers=HEADERS, auth=AUTH, body=BODIES)
@example(method=b"POST", instance="anthropic", segments=["v1", "messages"], raw=b"", headers=[], auth="valid",
         body=b'{"model":"m","max_tokens":1,"messages":[]}')  # forwarded: the invariant's other side
@example(method=b"GET", instance="openai", segments=["v1", "models", "..", "chat", "completions"], raw=b"",
         headers=[(b"x-api-key", b"\xff")], auth="byok", body=b"")
def test_gateway_routes(gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire, method: bytes, instance: str,
                        segments: list[str], raw: bytes, headers: list[tuple[bytes, bytes]], auth: str,
                        body: bytes) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    lines, query = credentials(auth, key)
    path = f"/api/v2/aibridge/{instance}/{'/'.join(segments)}".encode("utf-8", "surrogateescape") + raw
    if query:
        path += b"?" + query
    data = (method + b" " + path + b" HTTP/1.1\r\n" + f"Host: 127.0.0.1:{tripwire.port}\r\n".encode() + lines
            + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    before = len(upstream.requests)
    send(gateway.port, data)
    check(upstream, tripwire, before, authorized=auth in ("valid", "byok", "byok-empty", "byok-twice", "byok-extra"),
          key=key)


@FUZZ
@given(method=METHODS, host=PROXY_HOSTS, segments=st.lists(SEGMENTS, max_size=4), headers=HEADERS, auth=AUTH,
       body=BODIES)
@example(method=b"GET", host="api.anthropic.com", segments=["v1", "models"], headers=[], auth="proxy-only", body=b"")
@example(method=b"GET", host="127.0.0.1:{trip}", segments=["x"], headers=[], auth="none", body=b"")
def test_proxy_requests(gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire, method: bytes, host: str,
                        segments: list[str], headers: list[tuple[bytes, bytes]], auth: str, body: bytes) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    lines, query = credentials(auth, key)
    target = host.format(trip=tripwire.port)
    path = ("/" + "/".join(segments)).encode("utf-8", "surrogateescape") + (b"?" + query if query else b"")
    data = (method + b" http://" + target.encode() + path + b" HTTP/1.1\r\n" + f"Host: {target}\r\n".encode()
            + lines + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    before = len(upstream.requests)
    send(gateway.port, data)
    # The proxy password is the gateway key: only it (with or without a provider credential) opens the way.
    check(upstream, tripwire, before, authorized=auth == "proxy-only", key=key)
