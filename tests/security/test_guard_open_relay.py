"""Finding 1: an addon exception must never turn the gateway into an open relay.

Before the fix, a credential header that is not valid UTF-8 made `auth.py` raise; mitmproxy
logged the error and forwarded the request to whatever `Host` named. Every request here names
the tripwire as its Host (or proxy target) and must leave it, and the fake upstream, untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway
from tests.security.tripwire import Tripwire, basic, exchange, gateway_ca, read_response, tunnel

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.fixture(autouse=True)
def _fresh_tripwire(tripwire: Tripwire) -> None:
    tripwire.reset()


def assert_nothing_left(upstream: FakeUpstream, tripwire: Tripwire) -> None:
    assert tripwire.received == b""
    assert upstream.requests == []


def test_the_issue_reproduction_is_refused(gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire) -> None:
    # printf 'GET /x HTTP/1.1\r\nHost: 8.8.8.8:22\r\nx-api-key: \xff\r\n\r\n' | nc 127.0.0.1 8888
    response = exchange(gateway.port, f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{tripwire.port}\r\n".encode()
                        + b"x-api-key: \xff\r\n\r\n")
    assert response.status == 400
    assert orjson.loads(response.body)["error"]["message"] == "credential header x-api-key is not printable ASCII"
    assert_nothing_left(upstream, tripwire)


@pytest.mark.parametrize("header", [b"x-api-key: \xff\xfe", b"authorization: Bearer \xc3\x28",
                                    b"x-aigw-token: caf\xc3\xa9", b"authorization: Bearer a\x01b"])
def test_undecodable_credentials_on_a_gateway_route(gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire,
                                                     header: bytes) -> None:
    body = b'{"model":"m","max_tokens":1,"messages":[]}'
    response = exchange(gateway.port, b"POST /api/v2/aibridge/anthropic/v1/messages HTTP/1.1\r\n"
                        + f"Host: 127.0.0.1:{tripwire.port}\r\ncontent-length: {len(body)}\r\n".encode()
                        + header + b"\r\n\r\n" + body, "POST")
    assert response.status == 400
    error = orjson.loads(response.body)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"  # Anthropic's shape
    assert_nothing_left(upstream, tripwire)


def test_a_valid_key_does_not_make_any_host_reachable(gateway: Gateway, upstream: FakeUpstream,
                                                      tripwire: Tripwire) -> None:
    for path in ("/x", "/v1/messages", "/api/v2/aibridge/nope/v1/messages", "/api/v2/aibridge/anthropic/v2/x"):
        response = exchange(gateway.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{tripwire.port}\r\n"
                            f"x-api-key: {gateway.user_key}\r\n\r\n".encode())  # type: ignore[attr-defined]
        assert response.status == 404, (path, response)
        assert response.body != b"tripwire reached"
    assert_nothing_left(upstream, tripwire)


def test_a_raising_admin_handler_does_not_relay_the_admin_key(gateway: Gateway, upstream: FakeUpstream,
                                                              tripwire: Tripwire) -> None:
    for sql in ("select interval 1 day", "select 1/0", "select 'x'::int"):
        body = orjson.dumps({"sql": sql})
        response = exchange(gateway.port, b"POST /api/v2/aibridge/query HTTP/1.1\r\n"
                            + f"Host: 127.0.0.1:{tripwire.port}\r\ncontent-length: {len(body)}\r\n"
                            f"authorization: Bearer {gateway.admin_key}\r\n\r\n".encode()  # type: ignore[attr-defined]
                            + body, "POST")
        assert response.status in (200, 400, 500), response
        assert response.body != b"tripwire reached"
    assert_nothing_left(upstream, tripwire)


def test_plain_http_proxy_requests_with_undecodable_credentials(gateway: Gateway, upstream: FakeUpstream,
                                                               tripwire: Tripwire) -> None:
    target = f"http://127.0.0.1:{tripwire.port}/x"
    for header in (b"Proxy-Authorization: Basic \xff\xff", b"Proxy-Authorization: " + basic("k").encode()
                   + b"\r\nx-api-key: \xff"):
        response = exchange(gateway.port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{tripwire.port}\r\n".encode()
                            + header + b"\r\n\r\n")
        assert response.status == 400, response
    assert_nothing_left(upstream, tripwire)


def test_inside_a_decrypted_tunnel(gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire) -> None:
    with tunnel(gateway.port, "api.anthropic.com", gateway.user_key, gateway_ca(gateway.workdir)) as tls:  # type: ignore[attr-defined]
        tls.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{tripwire.port}\r\n".encode()
                    + b"x-api-key: \xff\r\n\r\n")
        response = read_response(tls)
    assert response.status == 400
    assert orjson.loads(response.body)["type"] == "error"
    assert_nothing_left(upstream, tripwire)


def test_control_the_routes_still_work(gateway: Gateway, upstream: FakeUpstream) -> None:
    """The same gateway forwards a well-formed request (so the refusals above are not an outage)."""
    response = httpx.get(f"{gateway.url}/api/v2/aibridge/anthropic/v1/models",
                         headers={"x-api-key": gateway.user_key}, trust_env=False)  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert [r.path for r in upstream.requests] == ["/v1/models"]
