"""The transparent proxy end to end: a real gateway subprocess, clients with HTTPS_PROXY + the
gateway CA, and TLS fake upstreams (signed by a test CA the gateway trusts) posing as the providers.

Hosts used: api.anthropic.com, api.openai.com, the Copilot hosts and chatgpt.com are decrypted and
mapped (well-known host rule) to instances whose base URLs point at the fake on 127.0.0.1;
127.0.0.2 is an instance whose upstream certificate is invalid; `localhost` is a non-AI host
(a second TLS server) that must be tunnelled untouched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
import websockets.sync.client

from tests import txtar
from tests.fakes.tls import Pki, TlsFakeUpstream
from tests.fakes.upstream import Reply, sse
from tests.gateway_process import (
    ANTHROPIC_PROVIDER_KEY,
    OPENAI_PROVIDER_KEY,
    Gateway,
    aigw,
    clean_env,
    start_proxy_gateway,
)

pytestmark = pytest.mark.e2e

P = "CODER_AIBRIDGE_PROVIDER_"
COPILOT_TOKEN = "gho_COPILOT-USER-TOKEN-1234567890abcdef"
CHATGPT_TOKEN = "eyJhbGciOiJSUzI1NiJ9.CHATGPT-OAUTH-TOKEN.signature-abcdef"


@dataclass
class Fakes:
    ai: TlsFakeUpstream  # every provider instance's base URL
    origin: TlsFakeUpstream  # a non-AI HTTPS host (`localhost`)
    bad: TlsFakeUpstream  # an instance upstream whose certificate the gateway must reject


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fakes(pki: Pki) -> Iterator[Fakes]:
    try:
        bad = TlsFakeUpstream(pki.server_context("127.0.0.2", self_signed=True), host="127.0.0.2")
    except OSError as e:  # pragma: no cover - 127.0.0.0/8 beyond .1 exists on Linux
        pytest.skip(f"cannot bind 127.0.0.2: {e}")
    made = Fakes(ai=TlsFakeUpstream(pki.server_context("127.0.0.1", "localhost")).start(),
                 origin=TlsFakeUpstream(pki.server_context("localhost")).start(),
                 bad=bad.start())
    yield made
    for fake in (made.ai, made.origin, made.bad):
        fake.stop()


@pytest.fixture(autouse=True)
def _fresh_fakes(request: pytest.FixtureRequest) -> None:
    if "fakes" in request.fixturenames:
        made: Fakes = request.getfixturevalue("fakes")
        made.ai.reset()
        made.origin.reset()


def proxy_env(fakes: Fakes) -> dict[str, str]:
    url = fakes.ai.url
    return {
        f"{P}0_TYPE": "anthropic", f"{P}0_KEY": ANTHROPIC_PROVIDER_KEY, f"{P}0_BASE_URL": url,
        f"{P}1_TYPE": "openai", f"{P}1_KEY": OPENAI_PROVIDER_KEY, f"{P}1_BASE_URL": url + "/v1",
        f"{P}2_TYPE": "copilot", f"{P}2_BASE_URL": url,
        f"{P}3_TYPE": "openai", f"{P}3_NAME": "chatgpt", f"{P}3_BASE_URL": url + "/backend-api/codex",
        f"{P}4_TYPE": "openai", f"{P}4_NAME": "bad", f"{P}4_KEY": OPENAI_PROVIDER_KEY,
        f"{P}4_BASE_URL": fakes.bad.url + "/v1",
        "CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS": "127.0.0.0/8",
    }


@pytest.fixture(scope="module")
def gw(fakes: Fakes, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("gw-proxy")
    gateway = start_proxy_gateway(workdir, clean_env(**proxy_env(fakes)), pki.ca_path, [fakes.origin.port])
    yield gateway
    gateway.stop()


# -- helpers ---------------------------------------------------------------------------------


def key(gw: Gateway) -> str:
    return gw.user_key  # type: ignore[attr-defined,no-any-return]


def proxy_url(gw: Gateway, secret: str | None = None) -> str:
    return f"http://aigw:{secret or key(gw)}@127.0.0.1:{gw.port}"


def gateway_ca(gw: Gateway) -> Path:
    return gw.workdir / "certs" / "mitmproxy-ca-cert.pem"


def trust(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only `cafile`."""
    return ssl.create_default_context(cafile=str(cafile))


def client(gw: Gateway, secret: str | None = None) -> httpx.Client:
    return httpx.Client(proxy=proxy_url(gw, secret), verify=trust(gateway_ca(gw)), trust_env=False, timeout=20)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class ConnectReply:
    status: int
    headers: dict[str, str]
    body: bytes
    sock: socket.socket


def raw_request(gw: Gateway, head: str, auth: str | None) -> ConnectReply:
    """Send one proxy request (CONNECT or absolute-form) by hand; read the reply head and body."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    lines = [head, *([f"Proxy-Authorization: {auth}"] if auth is not None else [])]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return ConnectReply(int(status_line.split()[1]), headers, body, sock)


def connect(gw: Gateway, target: str, auth: str | None) -> ConnectReply:
    return raw_request(gw, f"CONNECT {target} HTTP/1.1\r\nHost: {target}", auth)


def count(gw: Gateway) -> int:
    return gw.query("select count(*) as n from aibridge_interceptions")[0]["n"]


def latest_after(gw: Gateway, before: int, n: int = 1) -> list[dict[str, Any]]:
    rows = gw.wait_for("select * from aibridge_interceptions where ended_at is not null order by started_at",
                       lambda r: len(r) >= before + n)
    assert len(rows) >= before + n, "the request was not recorded"
    return rows[before:]


def children(gw: Gateway, table: str, iid: str) -> list[dict[str, Any]]:
    return gw.query(f"select * from {table} where interception_id = '{iid}' order by created_at")


def tokens(gw: Gateway, iid: str) -> list[tuple[int, int, int]]:
    return [(t["input_tokens"], t["output_tokens"], t["cache_read_input_tokens"])
            for t in children(gw, "aibridge_token_usages", iid)]


# -- CA and CLI ------------------------------------------------------------------------------


def test_ca_is_generated_private_and_bundled(gw: Gateway, tmp_path: Path) -> None:
    secret = gw.workdir / "certs" / "mitmproxy-ca.pem"
    assert secret.stat().st_mode & 0o777 == 0o600
    printed = gw.cli("ca").stdout.strip()
    assert Path(printed) == gateway_ca(gw).resolve()
    assert "PRIVATE KEY" not in Path(printed).read_text()

    bundle = tmp_path / "bundle.pem"
    assert Path(gw.cli("ca", "--bundle", str(bundle)).stdout.strip()) == bundle.resolve()
    text = bundle.read_text()
    assert gateway_ca(gw).read_text().strip() in text
    assert text.count("BEGIN CERTIFICATE") > 20  # the system / certifi roots came along
    # The bundle works for a client whose CA setting replaces the default roots.
    with httpx.Client(proxy=proxy_url(gw), verify=ssl.create_default_context(cafile=str(bundle)),
                      trust_env=False) as c:
        r = c.get("https://api.openai.com/v1/models", headers={"authorization": f"Bearer {key(gw)}"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "fake-model"

    out = gw.cli("env", "--user-key", key(gw), "--bundle", str(bundle)).stdout
    assert f"export HTTPS_PROXY=http://aigw:{key(gw)}@127.0.0.1:{gw.port}" in out
    for var in ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        assert f"export {var}=" in out
    assert str(gateway_ca(gw).resolve()) in out
    assert f"export SSL_CERT_FILE={bundle.resolve()}" in out


def test_ca_command_works_without_a_gateway(tmp_path: Path) -> None:
    result = aigw(["ca", "--init"], clean_env(CODER_AIBRIDGE_HOME=str(tmp_path)), tmp_path / "..")
    cert = Path(result.stdout.strip())
    assert cert == (tmp_path / "certs" / "mitmproxy-ca-cert.pem").resolve() and cert.is_file()
    assert (tmp_path / "certs" / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600


def test_config_check_prints_the_host_table(gw: Gateway) -> None:
    out = gw.cli("config", "check").stdout
    lines = {line.split()[0]: line for line in out.splitlines() if "->" in line}
    assert "-> anthropic (well-known anthropic host)" in lines["api.anthropic.com"]
    assert "-> openai under /v1" in lines["api.openai.com"]
    for plan in ("individual", "business", "enterprise"):
        assert "-> copilot" in lines[f"api.{plan}.githubcopilot.com"]
    assert "-> chatgpt under /backend-api/codex" in lines["chatgpt.com"]
    assert "-> bad under /v1 (base URL host)" in lines["127.0.0.2"]


# -- decrypted AI hosts ------------------------------------------------------------------------


def test_curl_with_proxy_and_cacert(gw: Gateway, fakes: Fakes) -> None:
    import subprocess

    before = count(gw)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "via curl"}]}
    result = subprocess.run(
        ["/usr/bin/curl", "-sS", "--fail-with-body", "--max-time", "20", "--proxy", proxy_url(gw),
         "--cacert", str(gateway_ca(gw)), "https://api.anthropic.com/v1/messages?beta=true",
         "-H", "content-type: application/json", "-H", "anthropic-version: 2023-06-01",
         "-H", "user-agent: claude-cli/2.1.197 (external, sdk-cli)", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in clean_env().items() if k.lower() != "no_proxy"})
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads(result.stdout)["content"][0]["text"] == "Hello from the fake upstream."
    seen = fakes.ai.requests[-1]
    assert seen.path == "/v1/messages?beta=true"
    assert seen.headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY  # no credential sent: the instance key
    assert "proxy-authorization" not in seen.headers
    row = latest_after(gw, before)[-1]
    assert (row["provider_name"], row["client"], row["credential_kind"], row["status"]) == (
        "anthropic", "Claude Code", "centralized", "completed")
    metadata = json.loads(row["metadata"])
    assert metadata["mode"] == "proxy" and metadata["username"] == "alice"
    assert [p["prompt"] for p in children(gw, "aibridge_user_prompts", row["id"])] == ["via curl"]


def test_anthropic_sdk_through_the_proxy_streams_and_records(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    http_client = httpx2.Client(proxy=proxy_url(gw), verify=trust(gateway_ca(gw)), trust_env=False)
    sdk = anthropic.Anthropic(base_url="https://api.anthropic.com", api_key=key(gw), http_client=http_client,
                              max_retries=0)
    with sdk.messages.stream(model="claude-sonnet-4-5", max_tokens=50,
                             messages=[{"role": "user", "content": "stream through the proxy"}]) as stream:
        text = "".join(stream.text_stream)
    assert text.strip() == "Hello from the fake upstream."
    seen = fakes.ai.requests[-1]
    assert seen.headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY
    assert key(gw) not in json.dumps(seen.headers)  # the gateway key never goes upstream
    row = latest_after(gw, before)[-1]
    assert row["credential_kind"] == "centralized" and row["client"] == "Anthropic SDK (Python)"
    assert tokens(gw, row["id"]) == [(25, 12, 100)]


def test_openai_sdk_through_the_proxy_with_its_own_key_is_byok(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    own = "sk-proj-USERS-OWN-OPENAI-KEY-ddddddddddddddd"
    http_client = httpx2.Client(proxy=proxy_url(gw), verify=trust(gateway_ca(gw)), trust_env=False)
    sdk = openai.OpenAI(base_url="https://api.openai.com/v1", api_key=own, http_client=http_client, max_retries=0)
    events = list(sdk.responses.create(model="gpt-5-codex", input="write a poem", stream=True,
                                       reasoning={"summary": "auto"}))
    assert events[-1].type == "response.completed"
    seen = fakes.ai.requests[-1]
    assert seen.path == "/v1/responses"
    assert seen.headers["authorization"] == f"Bearer {own}"
    row = latest_after(gw, before)[-1]
    assert (row["provider_name"], row["credential_kind"]) == ("openai", "byok")
    assert row["credential_hint"] and own not in row["credential_hint"]
    assert tokens(gw, row["id"]) == [(30, 20, 200)]


def test_httpx_chat_with_the_gateway_key_as_bearer(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    with client(gw) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", headers={"authorization": f"Bearer {key(gw)}"},
                   json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello proxy"}]})
    assert r.status_code == 200, r.text
    assert fakes.ai.requests[-1].headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
    row = latest_after(gw, before)[-1]
    assert row["credential_kind"] == "centralized" and row["client"] == "httpx"


def test_plain_http_absolute_form_is_authenticated_and_routed(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "plain http"}]}
    with httpx.Client(proxy=proxy_url(gw), trust_env=False) as c:
        r = c.post("http://api.anthropic.com/v1/messages", json=body)
    assert r.status_code == 200, r.text
    assert fakes.ai.requests[-1].headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY
    assert latest_after(gw, before)[-1]["provider_name"] == "anthropic"
    with httpx.Client(proxy=f"http://127.0.0.1:{gw.port}", trust_env=False) as c:
        refused = c.post("http://api.anthropic.com/v1/messages", json=body)
    assert refused.status_code == 407 and refused.headers["proxy-authenticate"].startswith("Basic")
    # The gateway's own routes still answer through HTTP_PROXY (a client with both set).
    with httpx.Client(proxy=f"http://127.0.0.1:{gw.port}", trust_env=False) as c:
        assert c.get(f"{gw.url}/healthz").status_code == 200


def test_non_llm_paths_on_ai_hosts_are_relayed_not_recorded(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    with client(gw) as c:
        settings = c.get("https://api.anthropic.com/api/claude_code/settings",
                         headers={"authorization": "Bearer sk-ant-oat01-CLAUDE-SUBSCRIPTION"})
        counted = c.post("https://api.anthropic.com/v1/messages/count_tokens", json={"model": "m", "messages": []},
                         headers={"x-api-key": key(gw)})
        outside = c.get("https://chatgpt.com/backend-api/wham/usage", headers={"x-api-key": key(gw)})
    assert settings.status_code == 404  # whatever the upstream answered, relayed
    relayed = fakes.ai.requests[-3]
    assert relayed.path == "/api/claude_code/settings"
    assert relayed.headers["authorization"] == "Bearer sk-ant-oat01-CLAUDE-SUBSCRIPTION"
    assert "x-api-key" not in relayed.headers
    assert counted.json() == {"input_tokens": 42}
    assert fakes.ai.requests[-2].headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY  # a passthrough route
    assert outside.status_code == 404
    assert fakes.ai.requests[-1].path == "/backend-api/wham/usage"
    assert "x-api-key" not in fakes.ai.requests[-1].headers  # the gateway key is stripped, nothing injected
    with client(gw) as c:  # a recorded call proves the writer caught up; the relays added nothing
        c.post("https://api.anthropic.com/v1/messages", json={"model": "m", "max_tokens": 5, "messages": []})
    latest_after(gw, before)
    assert count(gw) == before + 1


# -- Copilot and ChatGPT/Codex ---------------------------------------------------------------


COPILOT_HEADERS = {
    "authorization": f"Bearer {COPILOT_TOKEN}",
    "copilot-integration-id": "copilot-developer-cli",
    "editor-version": "copilot/1.0.102",
    "x-client-session-id": "copilot-session-1",
    "x-interaction-id": "interaction-1",
    "x-initiator": "user",
    "user-agent": "copilot/1.0.102 (linux v22.0.0) term/unknown",
}


@pytest.mark.parametrize("plan", ["individual", "business"])
def test_copilot_chat_and_messages_forward_the_users_token(gw: Gateway, fakes: Fakes, plan: str) -> None:
    before = count(gw)
    host = f"https://api.{plan}.githubcopilot.com"
    with client(gw) as c:
        chat = c.post(f"{host}/chat/completions", headers=COPILOT_HEADERS, json={
            "model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "copilot chat"}]})
        messages = c.post(f"{host}/v1/messages", headers={**COPILOT_HEADERS, "anthropic-version": "2023-06-01"},
                          json={"model": "claude-sonnet-4.6", "max_tokens": 20,
                                "messages": [{"role": "user", "content": "copilot claude"}]})
        models = c.get(f"{host}/models", headers=COPILOT_HEADERS)
    assert chat.status_code == 200 and "data: [DONE]" in chat.text
    assert messages.status_code == 200 and messages.json()["type"] == "message"
    assert models.status_code == 200  # passed through
    for seen in fakes.ai.requests:
        assert seen.headers["authorization"] == f"Bearer {COPILOT_TOKEN}"
        assert seen.headers["editor-version"] == "copilot/1.0.102"
        assert seen.headers["copilot-integration-id"] == "copilot-developer-cli"
    assert [s.path for s in fakes.ai.requests] == ["/chat/completions", "/v1/messages", "/models"]
    rows = latest_after(gw, before, 2)
    assert len(rows) == 2  # /models is relayed, not recorded
    for row in rows:
        assert (row["provider"], row["credential_kind"], row["client"]) == ("copilot", "byok", "Copilot CLI")
        assert row["client_session_id"] == "copilot-session-1"  # Copilot CLI's own x-client-session-id
        assert COPILOT_TOKEN not in (row["credential_hint"] or "")
    assert sorted(json.loads(r["metadata"])["route"] for r in rows) == ["/chat/completions", "/v1/messages"]


def copilot_rotating_stream() -> list[bytes]:
    """A Copilot /responses stream: a new item_id on every event, plus `copilot_usage`."""
    ids = iter(f"rotated-{n}" for n in range(100))
    usage = {"input_tokens": 900, "input_tokens_details": {"cached_tokens": 300}, "output_tokens": 60,
             "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 960}
    copilot_usage = {"token_details": [{"token_type": "input", "token_count": 600, "batch_size": 1000,
                                        "cost_per_batch": 100}], "total_nano_aiu": 4242}
    calls = [{"type": "function_call", "call_id": "call_ls", "name": "shell", "arguments": '{"command": "ls"}'},
             {"type": "function_call", "call_id": "call_rd", "name": "read_file", "arguments": '{"path": "a.py"}'}]
    response = {"id": "resp_copilot_1", "object": "response", "model": "gpt-5-mini", "status": "in_progress",
                "output": [], "usage": None}

    def ev(kind: str, **fields: Any) -> bytes:
        return sse(kind, {"type": kind, **fields})

    out = [ev("response.created", response=response),
           ev("response.output_item.added", output_index=0,
              item={"id": next(ids), "type": "reasoning", "summary": []}),
           ev("response.reasoning_summary_text.delta", item_id=next(ids), output_index=0, summary_index=0,
              delta="Listing "),
           ev("response.reasoning_summary_text.delta", item_id=next(ids), output_index=0, summary_index=0,
              delta="then reading.")]
    for index, call in enumerate(calls, start=1):
        out.append(ev("response.output_item.added", output_index=index,
                      item={**call, "id": next(ids), "arguments": "", "status": "in_progress"}))
    for index, call in enumerate(calls, start=1):  # interleaved deltas, every one with a fresh item_id
        args = call["arguments"]
        out.append(ev("response.function_call_arguments.delta", item_id=next(ids), output_index=index,
                      delta=args[:6]))
    for index, call in enumerate(calls, start=1):
        out.append(ev("response.function_call_arguments.delta", item_id=next(ids), output_index=index,
                      delta=call["arguments"][6:]))
    final = {**response, "status": "completed", "usage": usage, "output": [
        {"id": next(ids), "type": "reasoning", "summary": [{"type": "summary_text", "text": "Listing then reading."}]},
        *({**call, "id": next(ids), "status": "completed"} for call in calls)]}
    out.append(ev("response.completed", response=final, copilot_usage=copilot_usage))
    return out


def test_copilot_responses_rotating_item_ids_and_copilot_usage(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    fakes.ai.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=copilot_rotating_stream()))
    with client(gw) as c:
        r = c.post("https://api.individual.githubcopilot.com/responses", headers=COPILOT_HEADERS, json={
            "model": "gpt-5-mini", "stream": True, "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list and read"}]}]})
    assert r.status_code == 200 and "response.completed" in r.text
    row = latest_after(gw, before)[-1]
    assert (row["provider"], row["status"], row["credential_kind"]) == ("copilot", "completed", "byok")
    usage = children(gw, "aibridge_token_usages", row["id"])
    assert [(u["input_tokens"], u["output_tokens"], u["cache_read_input_tokens"]) for u in usage] == [
        (600, 60, 300)]
    assert json.loads(usage[0]["metadata"])["copilot_usage"]["total_nano_aiu"] == 4242
    tools = children(gw, "aibridge_tool_usages", row["id"])
    assert sorted((t["provider_tool_call_id"], t["tool"], json.loads(t["input"])) for t in tools) == [
        ("call_ls", "shell", {"command": "ls"}), ("call_rd", "read_file", {"path": "a.py"})]
    thoughts = children(gw, "aibridge_model_thoughts", row["id"])
    assert [t["content"] for t in thoughts] == ["Listing then reading."]


CODEX_HEADERS = {
    "authorization": f"Bearer {CHATGPT_TOKEN}",
    "chatgpt-account-id": "acct-1234",
    "originator": "codex_exec",
    "session_id": "codex-session-1",
    "version": "0.171.0",
    "user-agent": "codex_exec/0.171.0 (Linux 6.1; x86_64) xterm",
}


@pytest.mark.skipif(txtar.FIXTURES is None, reason=txtar.SKIP_REASON)
def test_codex_on_a_chatgpt_plan_is_recorded_with_its_oauth_token(gw: Gateway, fakes: Fakes) -> None:
    assert txtar.FIXTURES is not None
    _, sections = txtar.load(txtar.FIXTURES / "openai" / "responses" / "streaming" / "codex_example.txtar")
    body = json.loads(sections["request"])
    body["stream"] = True
    before = count(gw)
    with client(gw) as c:
        r = c.post("https://chatgpt.com/backend-api/codex/responses", headers=CODEX_HEADERS, json=body)
    assert r.status_code == 200 and "response.completed" in r.text
    seen = fakes.ai.requests[-1]
    assert seen.path == "/backend-api/codex/responses"
    assert seen.headers["authorization"] == f"Bearer {CHATGPT_TOKEN}"
    assert seen.headers["chatgpt-account-id"] == "acct-1234"
    row = latest_after(gw, before)[-1]
    assert (row["provider"], row["provider_name"], row["client"], row["credential_kind"]) == (
        "openai", "chatgpt", "Codex", "byok")
    assert row["client_session_id"] == "codex-session-1"
    assert children(gw, "aibridge_user_prompts", row["id"])  # the typed prompt, not AGENTS.md
    assert tokens(gw, row["id"]) == [(30, 20, 200)]


def test_codex_websocket_responses_are_relayed_and_recorded(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    turns = [
        {"type": "response.create", "model": "gpt-5-codex", "reasoning": {"summary": "auto"},
         "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ws poem"}]}]},
        {"type": "response.create", "model": "gpt-5-codex", "previous_response_id": "resp_prev",
         "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
         "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]}]},
    ]
    received: list[list[dict[str, Any]]] = []
    with websockets.sync.client.connect(
            "wss://chatgpt.com/backend-api/codex/responses", proxy=proxy_url(gw), ssl=trust(gateway_ca(gw)),
            additional_headers={**CODEX_HEADERS, "openai-beta": "responses_websockets=2026-02-06"},
            open_timeout=15) as ws:
        for turn in turns:
            ws.send(json.dumps(turn))
            events = []
            while not events or events[-1]["type"] != "response.completed":
                events.append(json.loads(ws.recv(timeout=15)))
            received.append(events)
    assert [e["type"] for e in received[0]][:2] == ["response.created", "response.in_progress"]
    path, handshake = fakes.ai.ws_handshakes[-1]
    assert path == "/backend-api/codex/responses"
    assert handshake["authorization"] == f"Bearer {CHATGPT_TOKEN}"
    assert [m["type"] for m in fakes.ai.ws_messages] == ["response.create", "response.create"]

    rows = latest_after(gw, before, 2)
    assert len(rows) == 2
    for row in rows:
        metadata = json.loads(row["metadata"])
        assert (row["provider_name"], row["status"], row["credential_kind"], row["client"]) == (
            "chatgpt", "completed", "byok", "Codex")
        assert metadata["transport"] == "websocket" and metadata["route"] == "/responses"
        assert metadata["mode"] == "proxy"
        assert tokens(gw, row["id"]) == [(30, 20, 200)]
    first, second = sorted(rows, key=lambda r: r["started_at"])
    assert [p["prompt"] for p in children(gw, "aibridge_user_prompts", first["id"])] == ["ws poem"]
    assert [t["content"] for t in children(gw, "aibridge_model_thoughts", first["id"])] == ["Thinking about it."]
    assert [t["tool"] for t in children(gw, "aibridge_tool_usages", second["id"])] == ["get_weather"]


def test_websocket_with_the_gateway_key_gets_the_instance_key(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    with websockets.sync.client.connect(
            "wss://api.openai.com/v1/responses", proxy=proxy_url(gw), ssl=trust(gateway_ca(gw)),
            additional_headers={"authorization": f"Bearer {key(gw)}"}, open_timeout=15) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5", "input": "hi over ws"}))
        while json.loads(ws.recv(timeout=15))["type"] != "response.completed":
            pass
    assert fakes.ai.ws_handshakes[-1][1]["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
    row = latest_after(gw, before)[-1]
    assert (row["provider_name"], row["credential_kind"]) == ("openai", "centralized")


def test_websocket_on_the_gateway_route_is_recorded_too(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    with websockets.sync.client.connect(
            f"ws://127.0.0.1:{gw.port}/api/v2/aibridge/openai/v1/responses", proxy=None,
            additional_headers={"authorization": f"Bearer {key(gw)}"}, open_timeout=15) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5", "input": "hi via the route"}))
        while json.loads(ws.recv(timeout=15))["type"] != "response.completed":
            pass
    assert fakes.ai.ws_handshakes[-1][0] == "/v1/responses"
    assert fakes.ai.ws_handshakes[-1][1]["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
    row = latest_after(gw, before)[-1]
    metadata = json.loads(row["metadata"])
    assert (metadata["mode"], metadata["transport"], row["status"]) == ("gateway", "websocket", "completed")
    assert [p["prompt"] for p in children(gw, "aibridge_user_prompts", row["id"])] == ["hi via the route"]


def test_websocket_closed_before_the_response_completes_is_recorded_cancelled(gw: Gateway, fakes: Fakes) -> None:
    before = count(gw)
    with websockets.sync.client.connect(
            "wss://api.openai.com/v1/responses", proxy=proxy_url(gw), ssl=trust(gateway_ca(gw)),
            additional_headers={"authorization": f"Bearer {key(gw)}"}, open_timeout=15) as ws:
        # Not a response.create the fake answers: the response never completes.
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5", "input": "never answered",
                            "metadata": {"fake": "silent"}}))
    row = latest_after(gw, before)[-1]
    assert row["status"] == "cancelled", row
    assert "closed the websocket" in json.loads(row["metadata"])["error"]


# -- everything else is tunnelled ------------------------------------------------------------


def test_non_ai_host_is_tunnelled_and_the_client_sees_its_real_certificate(gw: Gateway, fakes: Fakes,
                                                                           pki: Pki) -> None:
    before = count(gw)
    target = f"localhost:{fakes.origin.port}"
    reply = connect(gw, target, basic("aigw", key(gw)))
    assert reply.status == 200
    # Only the test CA is trusted: a gateway-minted certificate would fail this handshake.
    with trust(pki.ca_path).wrap_socket(reply.sock, server_hostname="localhost") as tls:
        issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
        assert issuer["commonName"] == "aigw test CA"
        tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200") and b"fake-model" in response
    assert fakes.origin.requests[-1].path == "/v1/models"
    assert fakes.ai.requests == []
    # An HTTPS client library sees the same, through the same proxy.
    with httpx.Client(proxy=proxy_url(gw), verify=trust(pki.ca_path), trust_env=False) as c:
        assert c.get(f"https://{target}/v1/models").status_code == 200
    with client(gw) as c:  # one recorded call: the tunnels recorded nothing
        c.post("https://api.anthropic.com/v1/messages", json={"model": "m", "max_tokens": 5, "messages": []})
    latest_after(gw, before)
    assert count(gw) == before + 1


@pytest.mark.parametrize("target", ["api.anthropic.com:443", "example.com:443"])
@pytest.mark.parametrize("auth", [
    None,
    "Bearer something",
    "Basic !!!not-base64!!!",
    basic("aigw", ""),
    "Basic " + base64.b64encode(b"no-colon-here").decode(),
    basic("aigw", "aigw_deadbeef_not-a-real-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
], ids=["missing", "not-basic", "bad-base64", "empty-password", "no-colon", "unknown-key"])
def test_proxy_authentication_is_required_for_every_host(gw: Gateway, target: str, auth: str | None) -> None:
    reply = connect(gw, target, auth)
    reply.sock.close()
    assert reply.status == 407
    assert reply.headers["proxy-authenticate"].lower().startswith("basic")
    assert json.loads(reply.body)["error"]["type"] == "authentication_error"


def test_revoked_key_is_refused_at_connect_and_inside_open_tunnels(gw: Gateway) -> None:
    secret = gw.create_key("mallory")
    assert connect(gw, "api.anthropic.com:443", basic("aigw", secret)).status == 200
    with client(gw, secret) as c:
        assert c.get("https://api.anthropic.com/v1/models").status_code == 200
        gw.cli("keys", "revoke", "_".join(secret.split("_")[:2]))
        inside = c.get("https://api.anthropic.com/v1/models")  # the same keep-alive tunnel
    assert inside.status_code == 401 and inside.json()["error"]["type"] == "authentication_error"
    reply = connect(gw, "api.anthropic.com:443", basic("aigw", secret))
    assert reply.status == 407 and b"revoked" in reply.body


@pytest.mark.parametrize(("target", "status", "words"), [
    ("10.1.2.3:443", 403, "private"),
    ("169.254.169.254:443", 403, "link-local"),
    ("[::1]:443", 403, "loopback"),
    ("100.64.0.1:443", 403, "reserved"),
    ("localhost:22", 403, "port 22"),
    ("example.com:8080", 403, "port 8080"),
    ("does-not-exist.invalid:443", 502, "cannot resolve"),
])
def test_refused_destinations(gw: Gateway, target: str, status: int, words: str) -> None:
    reply = connect(gw, target, basic("aigw", key(gw)))
    reply.sock.close()
    assert reply.status == status, reply.body
    assert words in json.loads(reply.body)["error"]["message"]


def test_plain_http_to_the_metadata_service_is_refused(gw: Gateway) -> None:
    reply = raw_request(gw, "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254",
                        basic("aigw", key(gw)))
    reply.sock.close()
    assert reply.status == 403 and b"link-local" in reply.body


# -- faults ----------------------------------------------------------------------------------


def test_upstream_with_an_invalid_certificate_is_a_clear_502(gw: Gateway) -> None:
    before = count(gw)
    with client(gw) as c:
        r = c.post("https://127.0.0.2/v1/chat/completions", headers={"authorization": f"Bearer {key(gw)}"},
                   json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502
    assert "certificate" in r.json()["error"]["message"].lower()
    row = latest_after(gw, before)[-1]
    assert row["provider_name"] == "bad" and row["status"] == "failed"


def test_clients_that_distrust_or_pin_fail_cleanly_and_nothing_else_is_affected(gw: Gateway, pki: Pki) -> None:
    # A client that does not trust the gateway CA aborts the handshake.
    with httpx.Client(proxy=proxy_url(gw), verify=trust(pki.ca_path), trust_env=False) as c:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.get("https://api.anthropic.com/v1/models")
    # A client pinning the provider's key rejects the gateway's certificate after the handshake.
    reply = connect(gw, "api.anthropic.com:443", basic("aigw", key(gw)))
    context = trust(gateway_ca(gw))
    with context.wrap_socket(reply.sock, server_hostname="api.anthropic.com") as tls:
        fingerprint = hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()
        assert fingerprint != "pinned-provider-fingerprint"  # the pin does not match: the client hangs up
    # Everybody else carries on.
    with client(gw) as c:
        assert c.get("https://api.anthropic.com/v1/models", headers={"x-api-key": key(gw)}).status_code == 200
    assert "does not trust the proxy's certificate" in gw.output() or "Client TLS handshake failed" in gw.output()
