"""Idle timeouts for the transparent proxy's decrypted AI hosts: a client with HTTPS_PROXY reaches
api.anthropic.com, mapped to an instance whose TLS upstream (a fake) hangs."""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Iterator

import anthropic
import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import httpx2
import pytest

from tests.fakes.tls import Pki, TlsFakeUpstream
from tests.fakes.upstream import Gate, Reply, anthropic_events
from tests.gateway_process import ANTHROPIC_PROVIDER_KEY, Gateway, clean_env, settled_count, start_proxy_gateway

pytestmark = pytest.mark.e2e

PROMPT = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hang?"}]}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsFakeUpstream, Pki]]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    upstream = TlsFakeUpstream(pki.server_context("127.0.0.1", "localhost")).start()
    yield upstream, pki
    upstream.stop()


@pytest.fixture(scope="module")
def gw(fake: tuple[TlsFakeUpstream, Pki], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    upstream, pki = fake
    env = clean_env(CODER_AIBRIDGE_PROVIDER_0_TYPE="anthropic", CODER_AIBRIDGE_PROVIDER_0_KEY=ANTHROPIC_PROVIDER_KEY,
                    CODER_AIBRIDGE_PROVIDER_0_BASE_URL=upstream.url,
                    CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS="127.0.0.0/8",
                    CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT="1s")
    gateway = start_proxy_gateway(tmp_path_factory.mktemp("gw-proxy-timeouts"), env, pki.ca_path, [upstream.port])
    yield gateway
    gateway.stop()


@pytest.fixture
def gates(fake: tuple[TlsFakeUpstream, Pki]) -> Iterator[list[Gate]]:
    fake[0].reset()
    made: list[Gate] = []
    yield made
    for gate in made:
        gate.open()


def proxied(gw: Gateway, http2: bool = False) -> httpx2.Client:
    ca = ssl.create_default_context(cafile=str(gw.workdir / "certs" / "mitmproxy-ca-cert.pem"))
    return httpx2.Client(proxy=f"http://aigw:{gw.user_key}@127.0.0.1:{gw.port}",  # type: ignore[attr-defined]
                         verify=ca, trust_env=False, timeout=30, http2=http2)


def sdk(gw: Gateway, http2: bool = False) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url="https://api.anthropic.com", api_key=gw.user_key,  # type: ignore[attr-defined]
                               http_client=proxied(gw, http2), max_retries=0)


def recorded(gw: Gateway, before: int) -> dict:
    rows = gw.wait_for("select * from aibridge_interceptions where ended_at is not null order by started_at",
                       lambda r: len(r) > before)
    assert len(rows) == before + 1
    row = rows[-1]
    row["metadata"] = json.loads(row["metadata"])
    return row


def test_hang_before_headers_through_the_proxy(gw: Gateway, fake: tuple[TlsFakeUpstream, Pki],
                                               gates: list[Gate]) -> None:
    gate = Gate(timeout=30)
    gates.append(gate)
    fake[0].queue(Reply(head_gate=gate))
    before = settled_count(gw)
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(gw).messages.create(**PROMPT)
    assert caught.value.status_code == 504
    assert "upstream timeout after 1s" in caught.value.message
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"], row["metadata"]["mode"]) == (
        "failed", "upstream timeout after 1s", "proxy")


@pytest.mark.parametrize("http2", [False, True], ids=["http1-client", "http2-client"])
def test_stream_hanging_midway_through_the_proxy(gw: Gateway, fake: tuple[TlsFakeUpstream, Pki],
                                                 gates: list[Gate], http2: bool) -> None:
    gate = Gate(timeout=30)
    gates.append(gate)
    events = anthropic_events(PROMPT)
    fake[0].queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[*events[:4], gate, *events[4:]]))
    before = settled_count(gw)
    with proxied(gw, http2) as client, client.stream(
            "POST", "https://api.anthropic.com/v1/messages", json={**PROMPT, "stream": True},
            headers={"x-api-key": gw.user_key}) as response:  # type: ignore[attr-defined]
        assert response.status_code == 200
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        body = b"".join(response.iter_raw())
    last = body.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert "upstream timeout after 1s" in json.loads(last.split(b"data: ", 1)[1])["error"]["message"]
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream timeout after 1s")
    # The gateway still serves the next request.
    with proxied(gw, http2) as client:
        ok = client.post("https://api.anthropic.com/v1/messages", json=PROMPT,
                         headers={"x-api-key": gw.user_key})  # type: ignore[attr-defined]
    assert ok.status_code == 200, ok.text


def test_sdk_stream_hanging_midway_through_the_proxy(gw: Gateway, fake: tuple[TlsFakeUpstream, Pki],
                                                     gates: list[Gate]) -> None:
    gate = Gate(timeout=30)
    gates.append(gate)
    events = anthropic_events(PROMPT)
    fake[0].queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[*events[:4], gate, *events[4:]]))
    with pytest.raises(anthropic.APIStatusError) as caught, sdk(gw).messages.stream(**PROMPT) as stream:
        assert list(stream.text_stream)
    assert "upstream timeout after 1s" in str(caught.value)
    assert isinstance(caught.value.response, httpx.Response | httpx2.Response)


def test_http2_client_cancelling_a_stream_is_recorded_cancelled(gw: Gateway, fake: tuple[TlsFakeUpstream, Pki],
                                                                gates: list[Gate]) -> None:
    """An HTTP/2 client that resets its stream (CANCEL) left: the row says cancelled, not failed."""
    gate = Gate(timeout=30)
    gates.append(gate)
    events = anthropic_events(PROMPT)
    fake[0].queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[*events[:2], gate, *events[2:]]))
    before = settled_count(gw)
    auth = base64.b64encode(f"aigw:{gw.user_key}".encode()).decode()  # type: ignore[attr-defined]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        raw.sendall(f"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n"
                    f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        tls_ctx = ssl.create_default_context(cafile=str(gw.workdir / "certs" / "mitmproxy-ca-cert.pem"))
        tls_ctx.set_alpn_protocols(["h2"])
        with tls_ctx.wrap_socket(raw, server_hostname="api.anthropic.com") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            body = json.dumps({**PROMPT, "stream": True}).encode()
            conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "api.anthropic.com"),
                                  (":path", "/v1/messages"), ("content-type", "application/json"),
                                  ("x-api-key", gw.user_key),  # type: ignore[attr-defined]
                                  ("anthropic-version", "2023-06-01"), ("content-length", str(len(body)))])
            conn.send_data(1, body, end_stream=True)
            sock.sendall(conn.data_to_send())
            status = None
            while True:  # until the stream's first bytes: it is running
                received = conn.receive_data(sock.recv(65535))
                sock.sendall(conn.data_to_send())
                status = next((dict(e.headers).get(b":status") for e in received
                               if isinstance(e, h2.events.ResponseReceived)), status)
                if any(isinstance(e, h2.events.DataReceived) for e in received):
                    break
            assert status == b"200"
            conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
            sock.sendall(conn.data_to_send())
            row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("cancelled", "stream reset by client (CANCEL)")
