"""A gateway key sent as `Proxy-Authorization: <key>` (no scheme) is refused with 407 without echoing
its first characters as the "scheme", in the answer or in the log."""

from __future__ import annotations

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway
from tests.security.tripwire import exchange

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("value", ["{key}", "{key} trailing", "  {key}"])
def test_a_bare_key_as_proxy_authorization_is_not_echoed(gateway: Gateway, upstream: FakeUpstream,
                                                         value: str) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    response = exchange(gateway.port, (f"GET http://api.anthropic.com/v1/models HTTP/1.1\r\n"
                                       f"Host: api.anthropic.com\r\nProxy-Authorization: {value.format(key=key)}"
                                       "\r\n\r\n").encode())
    assert response.status == 407
    assert b"unsupported proxy authentication scheme" in response.body
    secret = key.split("_", 2)[2]
    for text in (response.body.decode(), str(response.headers), gateway.output()):
        assert key[:14] not in text and secret[:6] not in text  # not even "aigw_<id>_" and a few characters
    assert upstream.requests == []
