"""Fail closed by construction: an exception in any hook of any aigw addon never forwards the request.

A real gateway subprocess runs with test-only fault injection (tests/security/faults/sitecustomize.py,
loaded through PYTHONPATH by this test alone): every flow hook of every aigw addon class can be made
to raise, one `Class.hook` at a time. For each, the same traffic is sent — gateway routes (recorded
and pass-through), the admin API, a plain-HTTP proxy request and a request in a decrypted tunnel — all
naming the tripwire as their Host. When a hook that runs before the request goes upstream raised, the
fake upstream, the proxy's relay target and the tripwire must have received nothing and the client
must have had the gateway's own error. Every firing is logged exactly once, and no interception is
left open.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, clean_env, provider_env
from tests.security.tripwire import Tripwire, basic, exchange, gateway_ca, read_response, tunnel

pytestmark = pytest.mark.e2e

FAULTS = Path(__file__).parent / "faults"
# Hooks that run before a request (or a connection) goes upstream: a fault there must forward nothing.
BEFORE_UPSTREAM = {"requestheaders", "request", "http_connect", "server_connect"}
# Addons every `aigw serve` chain has, whose request-side hooks this traffic must all exercise (others
# — mitmweb's, OpenTelemetry's, Bedrock's — are checked the same way whenever they fire).
CORE = {"Guard", "DefaultDeny", "GracefulShutdown", "ProxyAuth", "AddressGuard", "ProxyRouter", "Router", "AdminApi",
        "Interceptor", "Dumps"}


class Setup:
    def __init__(self, gateway: Gateway, upstream: FakeUpstream, tripwire: Tripwire, relay: Tripwire,
                 switch: Path) -> None:
        self.gateway, self.upstream, self.tripwire, self.relay, self.switch = gateway, upstream, tripwire, relay, switch
        self.user_key: str = gateway.user_key  # type: ignore[attr-defined]
        self.admin_key: str = gateway.admin_key  # type: ignore[attr-defined]

    @property
    def fired(self) -> list[str]:
        path = Path(f"{self.switch}.fired")
        return path.read_text().split() if path.exists() else []

    def host(self) -> str:
        return f"Host: 127.0.0.1:{self.tripwire.port}\r\n"

    # -- the traffic -------------------------------------------------------------------------

    def messages(self) -> int:
        body = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        return exchange(self.gateway.port, f"POST /api/v2/aibridge/anthropic/v1/messages HTTP/1.1\r\n{self.host()}"
                        f"x-api-key: {self.user_key}\r\ncontent-type: application/json\r\n"
                        f"content-length: {len(body)}\r\n\r\n".encode() + body, "POST").status

    def models(self) -> int:
        return exchange(self.gateway.port, f"GET /api/v2/aibridge/openai/v1/models HTTP/1.1\r\n{self.host()}"
                        f"authorization: Bearer {self.user_key}\r\n\r\n".encode()).status

    def admin(self) -> int:
        return exchange(self.gateway.port, f"GET /api/v2/aibridge/keys HTTP/1.1\r\n{self.host()}"
                        f"authorization: Bearer {self.admin_key}\r\n\r\n".encode()).status

    def plain_proxy(self) -> int:
        return exchange(self.gateway.port, f"GET http://127.0.0.2:{self.relay.port}/x HTTP/1.1\r\n{self.host()}"
                        f"Proxy-Authorization: {basic(self.user_key)}\r\n\r\n".encode()).status

    def tunnelled(self) -> int:
        try:
            tls = tunnel(self.gateway.port, "api.anthropic.com", self.user_key, gateway_ca(self.gateway.workdir))
        except AssertionError as refused:  # the CONNECT itself was answered with an error
            return int(str(refused).split()[1]) if str(refused).startswith("b'HTTP/1.1") else 599
        with tls:
            tls.sendall(f"GET /v1/models HTTP/1.1\r\n{self.host()}x-api-key: {self.user_key}\r\n\r\n".encode())
            return read_response(tls).status

    def traffic(self) -> dict[str, Callable[[], int]]:
        return {"messages": self.messages, "models": self.models, "admin": self.admin,
                "plain_proxy": self.plain_proxy, "tunnelled": self.tunnelled}


@pytest.fixture(scope="module")
def setup(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("faults")
    # The relay target is the proxy's "public host"; not on 127.0.0.1, which the instances' base URLs claim.
    tripwire, relay = Tripwire(), Tripwire(host="127.0.0.2")
    switch = workdir / "fault-switch"
    env = clean_env(**provider_env(upstream.url), PYTHONPATH=str(FAULTS), AIGW_FAULT_SWITCH=str(switch),
                    AIGW_FAULT_HOOKS=str(workdir / "fault-hooks"),
                    CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS="127.0.0.2/32")
    gateway = Gateway(workdir, env, ["--set", f"aigw_proxy_allowed_ports=80,443,{relay.port}"])
    gateway.admin_key = gateway.create_key("root", admin=True)  # type: ignore[attr-defined]
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield Setup(gateway, upstream, tripwire, relay, switch)
    gateway.stop()
    tripwire.close()
    relay.close()


def status_of(send: Callable[[], int]) -> int | None:
    try:
        return send()
    except (OSError, http.client.HTTPException):
        return None  # the gateway closed the connection without an answer


def test_every_hook_fails_closed(setup: Setup) -> None:
    # Control: with no fault armed, each kind of traffic reaches where it should.
    setup.switch.write_text("")
    statuses = {name: status_of(send) for name, send in setup.traffic().items()}
    assert statuses == {"messages": 200, "models": 200, "admin": 200, "plain_proxy": 200, "tunnelled": 200}
    assert len(setup.upstream.requests) == 3 and setup.relay.received.startswith(b"GET /x HTTP/1.1")
    assert setup.tripwire.received == b""

    labels = (setup.gateway.workdir / "fault-hooks").read_text().split()
    assert "Router.requestheaders" in labels and "Guard.requestheaders" in labels
    fired: set[str] = set()
    for label in labels:
        setup.switch.write_text(label)
        for name, send in setup.traffic().items():
            upstream_before, relay_before, fired_before = (len(setup.upstream.requests), len(setup.relay.received),
                                                           len(setup.fired))
            status = status_of(send)
            if len(setup.fired) == fired_before:
                continue
            fired.add(label)
            if label.split(".")[1] in BEFORE_UPSTREAM:
                where = f"{label} during {name}"
                assert status is None or status >= 400, where
                assert len(setup.upstream.requests) == upstream_before, where
                assert len(setup.relay.received) == relay_before, where
        assert setup.tripwire.received == b"", label
    setup.switch.write_text("")

    must_fire = {label for label in labels if label.split(".")[1] in BEFORE_UPSTREAM
                 and label.split(".")[0] in CORE}
    assert must_fire <= fired, f"never exercised: {sorted(must_fire - fired)}"
    assert {"Interceptor.responseheaders", "Interceptor.response", "DirectUpstream.response"} <= fired

    # Each injected exception is logged once (with its traceback), by the guard.
    time.sleep(0.5)  # the log is written by a listener thread
    log = setup.gateway.output()
    assert log.count("RuntimeError: injected fault in ") == len(setup.fired)
    # And every interception a fault interrupted was ended.
    rows = setup.gateway.wait_for("select count(*) as n from aibridge_interceptions where ended_at is null",
                                  lambda r: r[0]["n"] == 0)
    assert rows[0]["n"] == 0
    failed = setup.gateway.query("select count(*) as n from aibridge_interceptions where status = 'failed'")
    assert failed[0]["n"] > 0


def test_gateway_still_serves_after_the_faults(setup: Setup) -> None:
    setup.switch.write_text("")
    with socket.create_connection(("127.0.0.1", setup.gateway.port), timeout=5):
        pass
    assert status_of(setup.messages) == 200
