"""Finding 5: loose header handling. CR, LF or NUL in a header value, credentials that are not
printable ASCII and non-ASCII request lines get 400; too many or too large headers get 431 (limits
configurable) — in the provider's shape, and nothing is forwarded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, clean_env, provider_env
from tests.security.tripwire import Tripwire, exchange

pytestmark = pytest.mark.e2e

MESSAGES = "/api/v2/aibridge/anthropic/v1/messages"
BODY = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}'


def request(key: str, extra: bytes = b"", path: bytes = MESSAGES.encode(), host: str = "127.0.0.1") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\n" + f"Host: {host}\r\nx-api-key: {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n".encode() + extra + b"\r\n" + BODY)


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.mark.parametrize(("extra", "status", "says"), [
    (b"x-note: a\rb\r\n", 400, "control character"),
    (b"x-note: a\x00b\r\n", 400, "control character"),
    (b"x-note: a\x1bb\r\n", 400, "control character"),
    (b"anthropic-beta: \x00\r\n", 400, "control character"),
    (b"x-aigw-token: \xff\xfe\r\n", 400, "not printable ASCII"),
    # Not credentials, but recorded: undecodable text would make the interception's start unwritable.
    (b"user-agent: claude-cli/1.0 \xff\xfe\r\n", 400, "not valid UTF-8"),
    (b"traceparent: 00-\xc3\x28-01\r\n", 400, "not valid UTF-8"),
    (b"tracestate: a=\xed\xa0\x80\r\n", 400, "not valid UTF-8"),  # an encoded surrogate
    (b"x-note: \xc0\xae\r\n", 400, "not valid UTF-8"),  # overlong
    (b"x-note: " + b"a" * (1024 * 1024) + b"\r\n", 431, "too large"),
    (b"".join(b"x-h-%d: v\r\n" % i for i in range(5000)), 431, "too many"),
])
def test_bad_headers(gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire, extra: bytes, status: int,
                     says: str) -> None:
    response = exchange(gateway.port, request(gateway.user_key, extra,  # type: ignore[attr-defined]
                                              host=f"127.0.0.1:{tripwire.port}"), "POST")
    assert response.status == status
    error = orjson.loads(response.body)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"  # Anthropic's shape
    assert says in error["error"]["message"]
    assert upstream.requests == []
    assert tripwire.received == b""


@pytest.mark.parametrize("path", [b"/api/v2/aibridge/anthropic/v1/caf\xc3\xa9", b"/api/v2/aibridge/anthropic/v1/\xff",
                                  b"/api/v2/aibridge/anthropic/v1/messages?q=\xe2\x82\xac"])
def test_non_ascii_request_lines(gateway: Gateway, upstream: FakeUpstream, path: bytes) -> None:
    response = exchange(gateway.port, request(gateway.user_key, path=path), "POST")  # type: ignore[attr-defined]
    assert response.status == 400
    assert "non-ASCII" in orjson.loads(response.body)["error"]["message"]
    assert upstream.requests == []


def test_ordinary_headers_still_pass(gateway: Gateway, upstream: FakeUpstream) -> None:
    extra = "x-title: café\r\nuser-agent: a\tb\r\n".encode() + b"".join(b"x-h-%d: v\r\n" % i for i in range(80))
    response = exchange(gateway.port, request(gateway.user_key, extra), "POST")  # type: ignore[attr-defined]
    assert response.status == 200
    assert [r.path for r in upstream.requests] == ["/v1/messages"]
    assert upstream.requests[0].headers["x-h-79"] == "v"


@pytest.fixture(scope="module")
def strict(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("strict")
    gw = Gateway(workdir, clean_env(**provider_env(upstream.url), CODER_AIBRIDGE_MAX_HEADER_COUNT="20"),
                 ["--aibridge-max-header-bytes=2KiB"])
    gw.user_key = gw.create_key("alice")  # type: ignore[attr-defined]
    gw.start()
    yield gw
    gw.stop()


def test_limits_are_configurable(strict: Gateway, upstream: FakeUpstream) -> None:
    key: str = strict.user_key  # type: ignore[attr-defined]
    many = b"".join(b"x-h-%d: v\r\n" % i for i in range(20))
    assert exchange(strict.port, request(key, many), "POST").status == 431
    assert exchange(strict.port, request(key, b"x-note: " + b"a" * 2100 + b"\r\n"), "POST").status == 431
    assert upstream.requests == []
    assert exchange(strict.port, request(key, b"x-note: " + b"a" * 1500 + b"\r\n"), "POST").status == 200
    assert len(upstream.requests) == 1


def test_undecodable_user_agent_is_neither_forwarded_nor_orphaned(gateway: Gateway, upstream: FakeUpstream) -> None:
    """The red-team repro: forwarded with the organisation's key, then no interception row was written."""
    before = gateway.query("select (select count(*) from aibridge_interceptions) as i, "
                           "(select count(*) from aibridge_user_prompts) as p")[0]
    response = exchange(gateway.port, request(gateway.user_key,  # type: ignore[attr-defined]
                                              b"user-agent: claude-cli/1.0 \xff\xfe\r\n"), "POST")
    assert response.status == 400
    assert upstream.requests == []
    # A clean request after it is recorded whole: the writer did not stall on the refused one.
    assert exchange(gateway.port, request(gateway.user_key), "POST").status == 200  # type: ignore[attr-defined]
    rows = gateway.wait_for("select (select count(*) from aibridge_interceptions) as i, "
                            "(select count(*) from aibridge_user_prompts) as p",
                            lambda r: r[0]["i"] == before["i"] + 1 and r[0]["p"] == before["p"] + 1)
    orphans = gateway.query("select count(*) as n from aibridge_user_prompts p where not exists "
                            "(select 1 from aibridge_interceptions i where i.id = p.interception_id)")
    assert orphans[0]["n"] == 0, rows


def test_recorded_header_text_is_always_storable() -> None:
    """Defence in depth behind the guard: header text mitmproxy decoded with surrogateescape."""
    from addons.chain.intercept import _text

    raw = b"claude-cli/1.0 \xff\xfe".decode("utf-8", "surrogateescape")
    safe = _text(raw)
    assert safe is not None and safe.startswith("claude-cli/1.0 ")
    safe.encode("utf-8")  # a lone surrogate would raise here, as it did in the writer
    assert orjson.loads(orjson.dumps({"user_agent": safe}))["user_agent"] == safe
    assert _text(None) is None and _text("café") == "café"
