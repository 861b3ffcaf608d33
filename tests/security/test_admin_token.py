"""The local admin token works only from this machine; admin and user keys work from anywhere.

Tests bind only to loopback, so the remote peers are in-process flows (mitmproxy's `tflow` with
the client's address set) through the real AdminApi on a real database; the gateway subprocess
proves that the CLI's loopback path keeps working, from 127.0.0.1 and from another loopback address.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from addons.chain.admin import AdminApi, from_this_machine
from addons.chain.auth import LOCAL_ADMIN, KeyCache
from addons.settings.config import Settings
from addons.sinks.recorder import Recorder
from addons.store import keys as keystore
from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway

REMOTE = ["203.0.113.7", "10.0.0.2", "192.168.1.20", "::ffff:10.0.0.2", "2001:db8::1", "fe80::1%eth0",
          "0.0.0.0", "::"]
LOCAL = ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1"]


class Admin:
    """A real AdminApi over a real database, called with flows from any client address."""

    def __init__(self, tmp_path: Path) -> None:
        self.recorder = Recorder(Settings(db=tmp_path / "data" / "aibridge.duckdb"))
        self.recorder.open()
        assert self.recorder.writer is not None
        _, self.admin_key = self.recorder.writer.call(lambda c: keystore.create_key(c, "root", admin=True))
        _, self.user_key = self.recorder.writer.call(lambda c: keystore.create_key(c, "alice"))
        self.keys = KeyCache(self.recorder.writer.call(keystore.load_keys))
        self.api = AdminApi(self.recorder.settings, self.recorder, self.keys)

    def call(self, peer: str | None, token: str, path: str = "/api/v2/aibridge/keys") -> http.Response:
        flow = tflow.tflow()
        flow.client_conn.peername = (peer, 50000) if peer is not None else None  # type: ignore[assignment]
        flow.request.method, flow.request.path = "GET", path  # origin form, as the CLI sends it
        flow.request.headers["authorization"] = f"Bearer {token}"
        asyncio.run(self.api.request(flow))
        assert flow.response is not None
        return flow.response


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    a = Admin(tmp_path)
    yield a
    a.recorder.done()


@pytest.mark.parametrize("peer", [*REMOTE, None])
def test_the_admin_token_is_refused_from_other_machines(admin: Admin, peer: str | None) -> None:
    response = admin.call(peer, admin.keys.admin_token)
    assert response.status_code == 401
    error = orjson.loads(response.content)["error"]
    assert error["type"] == "authentication_error" and "only from this machine" in error["message"]
    assert admin.keys.admin_token not in response.text


@pytest.mark.parametrize("peer", LOCAL)
def test_the_admin_token_works_from_loopback(admin: Admin, peer: str) -> None:
    response = admin.call(peer, admin.keys.admin_token)
    assert response.status_code == 200, response.text
    assert {k["user"] for k in orjson.loads(response.content)} == {"root", "alice"}


@pytest.mark.parametrize("peer", REMOTE[:5])
def test_admin_and_user_keys_work_remotely(admin: Admin, peer: str) -> None:
    assert admin.call(peer, admin.admin_key).status_code == 200
    response = admin.call(peer, admin.user_key, "/api/v2/aibridge/sessions")
    assert response.status_code == 200, response.text
    # A user key stays a user key from anywhere.
    assert admin.call(peer, admin.user_key).status_code == 403


def test_from_this_machine_reads_the_peer_and_local_addresses() -> None:
    flow = tflow.tflow()
    flow.client_conn.sockname = ("127.0.0.1", 8888)
    for peer, expected in [*((p, False) for p in REMOTE), *((p, True) for p in LOCAL), ("not-an-ip", False)]:
        flow.client_conn.peername = (peer, 1)
        assert from_this_machine(flow) is expected, peer
    # A gateway listening on one interface: the CLI connects from that very address.
    flow.client_conn.sockname = ("10.0.0.5", 8888)
    for peer, expected in (("10.0.0.5", True), ("::ffff:10.0.0.5", True), ("10.0.0.6", False), ("127.0.0.1", True)):
        flow.client_conn.peername = (peer, 40000)
        assert from_this_machine(flow) is expected, peer
    flow.client_conn.sockname = ("0.0.0.0", 8888)
    flow.client_conn.peername = ("0.0.0.0", 40000)
    assert not from_this_machine(flow)


@pytest.mark.e2e
def test_the_cli_keeps_working_over_loopback(gateway: Gateway) -> None:
    assert gateway.cli("keys", "list", "--json").returncode == 0
    token = gateway.admin_token()
    for source in ("127.0.0.1", "127.0.0.2"):  # any loopback source address
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, trust_env=False) as client:
            response = client.get(gateway.url + "/api/v2/aibridge/keys", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text


def test_the_admin_token_is_no_gateway_key(admin: Admin) -> None:
    now = datetime.now(UTC)
    assert admin.keys.authenticate(admin.keys.admin_token, now) is None
    assert admin.keys.authenticate(admin.keys.admin_token, now, local_admin=True) is LOCAL_ADMIN
    assert admin.keys.authenticate(admin.user_key, now) is not None


def connect_status(gw: Gateway, password: str) -> int:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        auth = base64.b64encode(f"aigw:{password}".encode()).decode()
        sock.sendall(f"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


@pytest.mark.e2e
def test_the_admin_token_carries_no_provider_traffic(gateway: Gateway, upstream: FakeUpstream) -> None:
    token = gateway.admin_token()
    response = httpx.post(gateway.url + "/api/v2/aibridge/anthropic/v1/messages", trust_env=False,
                          json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
                          headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
    assert response.status_code == 401 and token not in response.text
    assert upstream.requests == []
    assert connect_status(gateway, token) == 407
    assert connect_status(gateway, gateway.user_key) == 200  # type: ignore[attr-defined]
