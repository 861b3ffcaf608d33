"""The real coding CLIs through the gateway as their HTTPS proxy (transparent-proxy mode).

No base URL: each CLI talks to the real provider host names with
`HTTPS_PROXY=http://aigw:<gateway key>@127.0.0.1:<port>` and the gateway CA trusted
(`NODE_EXTRA_CA_CERTS` for the Node CLIs, the `aigw ca --bundle` file as `SSL_CERT_FILE`
for Codex). The gateway decrypts api.anthropic.com / api.openai.com and sends them to
its instances, whose base URLs are a TLS fake upstream on 127.0.0.1 signed by a test CA
the gateway trusts (`ssl_verify_upstream_trusted_ca`); the api.*.githubcopilot.com hosts
go to a copilot instance on the same fake (as `localhost`). Every other host a CLI calls
(chatgpt.com, github.com, telemetry) is tunnelled; none resolves here, so each fails at
once with a 502 from the gateway's CONNECT.

The fake's default answers make every run two LLM calls (a tool call the CLI rejects,
then text), as in test_real_clients.py, which covers the same CLIs in base-URL mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_real_clients import FAKE_TOKENS, PROMPT, Run, binary, children, known_ids, new_interceptions
from tests.fakes.cli_upstream import CliFakeUpstream
from tests.fakes.tls import Pki
from tests.fakes.upstream import ANSWER, Reply, Seen, json_reply
from tests.gateway_process import (
    ANTHROPIC_PROVIDER_KEY,
    OPENAI_PROVIDER_KEY,
    Gateway,
    clean_env,
    start_proxy_gateway,
)

pytestmark = pytest.mark.e2e

P = "CODER_AIBRIDGE_PROVIDER_"
TIMEOUT = 60.0
# The developer's own setup must not leak into a CLI under test (proxy and CA variables included).
_INHERITED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "COPILOT_", "GH_", "GITHUB_", "XDG_")
_INHERITED_NAMES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "node_extra_ca_certs", "ssl_cert_file",
                    "ssl_cert_dir", "requests_ca_bundle", "node_tls_reject_unauthorized"}


@pytest.fixture(scope="module", name="pki")  # also the opencode tests' (test_opencode.py)
def cli_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", name="fake")  # also the opencode tests' (test_opencode.py)
def cli_fake(pki: Pki) -> Iterator[CliFakeUpstream]:
    server = CliFakeUpstream(pki.server_context("127.0.0.1", "localhost"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_fake(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()


@pytest.fixture(scope="module", name="gw")  # also the opencode tests' (test_opencode.py)
def cli_gateway(fake: CliFakeUpstream, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("gw-cli-proxy")
    env = clean_env(**{
        f"{P}0_TYPE": "anthropic", f"{P}0_KEY": ANTHROPIC_PROVIDER_KEY, f"{P}0_BASE_URL": fake.url,
        f"{P}1_TYPE": "openai", f"{P}1_KEY": OPENAI_PROVIDER_KEY, f"{P}1_BASE_URL": fake.url + "/v1",
        # Serves the api.*.githubcopilot.com hosts, and GitHub's API for Copilot CLI (see its test).
        f"{P}2_TYPE": "copilot", f"{P}2_BASE_URL": f"https://localhost:{fake.port}",
    })
    gateway = start_proxy_gateway(workdir, env, pki.ca_path, [fake.port])
    yield gateway
    gateway.stop()


# -- helpers ---------------------------------------------------------------------------------


def key(gw: Gateway) -> str:
    return gw.user_key  # type: ignore[attr-defined,no-any-return]


def proxy_url(gw: Gateway) -> str:
    return f"http://aigw:{key(gw)}@127.0.0.1:{gw.port}"


def gateway_ca(gw: Gateway) -> Path:
    return gw.workdir / "certs" / "mitmproxy-ca-cert.pem"


def run_proxied(argv: Sequence[str | Path], home: Path, gw: Gateway, env: dict[str, str]) -> Run:
    """Run a CLI with HOME in a temp dir, stdin from /dev/null, the gateway as its HTTPS proxy and
    no NO_PROXY (clean_env's `*` would send everything around the proxy); kill its session on timeout."""
    home.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in clean_env().items()
            if not k.startswith(_INHERITED_PREFIXES) and k.lower() not in _INHERITED_NAMES}
    full_env = {**base, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_CACHE_HOME": str(home / ".cache"), "XDG_DATA_HOME": str(home / ".local" / "share"),
                "XDG_STATE_HOME": str(home / ".local" / "state"), "NO_COLOR": "1",
                "HTTPS_PROXY": proxy_url(gw), **env}
    started = time.monotonic()
    proc = subprocess.Popen([str(a) for a in argv], env=full_env, cwd=home, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this CLI started
        stdout, stderr = proc.communicate()
        pytest.fail(f"{argv[0]} timed out after {TIMEOUT}s\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
                    f"\ngateway log:\n{gw.output()[-3000:]}")
    print(f"{Path(argv[0]).name} ran {time.monotonic() - started:.1f}s")  # shown with -s / on failure
    return Run(proc.returncode, stdout, stderr)


def detail(run: Run, gw: Gateway) -> str:
    return (f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
            f"\ngateway log:\n{gw.output()[-3000:]}")


def never_leaks(secret: str, fake: CliFakeUpstream) -> None:
    """`secret` reached the fake in no header, body, WebSocket handshake or message."""
    for seen in fake.requests:
        assert secret not in json.dumps(seen.headers), (seen.method, seen.path)
        assert secret not in seen.body.decode(errors="replace"), (seen.method, seen.path)
    for path, headers in fake.ws_handshakes:
        assert secret not in json.dumps(headers), path
    assert secret not in json.dumps(fake.ws_messages)


def presented(seen_headers: dict[str, str]) -> str | None:
    if "x-api-key" in seen_headers:
        return seen_headers["x-api-key"]
    auth = seen_headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


def tokens(gw: Gateway, iid: str) -> list[tuple[int, int, int, int]]:
    return [(t["input_tokens"], t["output_tokens"], t["cache_read_input_tokens"], t["cache_write_input_tokens"])
            for t in children(gw, "aibridge_token_usages", iid)]


def prompts(gw: Gateway, iid: str) -> list[str]:
    return [p["prompt"] for p in children(gw, "aibridge_user_prompts", iid)]


def check_rows(gw: Gateway, rows: list[dict[str, Any]], *, client: str, provider_name: str, kind: str,
               api: str) -> None:
    for row in rows:
        assert (row["client"], row["provider_name"], row["status"], row["credential_kind"]) == (
            client, provider_name, "completed", kind), row
        metadata = json.loads(row["metadata"])
        assert (metadata["mode"], metadata["username"]) == ("proxy", "alice"), metadata
        assert tokens(gw, row["id"]) == [FAKE_TOKENS[api]], row


# -- Claude Code ---------------------------------------------------------------------------------


CLAUDE_RELAYED = {"/api/claude_code/policy_limits", "/api/claude_code/settings"}
OWN_ANTHROPIC_KEY = "sk-ant-api03-USERS-OWN-KEY-made-up-0123456789abcdef"


@pytest.mark.parametrize("kind", ["centralized", "byok"])
def test_claude_code_through_the_proxy(gw: Gateway, fake: CliFakeUpstream, tmp_path: Path, kind: str) -> None:
    claude = binary("claude")
    api_key = key(gw) if kind == "centralized" else OWN_ANTHROPIC_KEY
    before = known_ids(gw)
    run = run_proxied([claude, "-p", PROMPT, "--output-format", "json"], tmp_path, gw, {
        "NODE_EXTRA_CA_CERTS": str(gateway_ca(gw)), "ANTHROPIC_API_KEY": api_key, "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_RETRIES": "0"})
    assert run.returncode == 0, detail(run, gw)
    output = json.loads(run.stdout)
    assert output["is_error"] is False and ANSWER in output["result"], detail(run, gw)

    llm = [s for s in fake.requests if s.method == "POST" and s.path == "/v1/messages?beta=true"]
    others = [s for s in fake.requests if s not in llm]
    assert len(llm) >= 2, [(s.method, s.path) for s in fake.requests]
    # Claude Code's own API calls on api.anthropic.com were relayed to the instance (the fake's 404 is fine).
    assert CLAUDE_RELAYED <= {s.path.partition("?")[0] for s in others}, [(s.method, s.path) for s in others]
    assert all(s.path.startswith("/api/") for s in others), [(s.method, s.path) for s in others]

    # The gateway key never leaves the gateway; BYOK never sees the organisation's key.
    never_leaks(key(gw), fake)
    expected = ANTHROPIC_PROVIDER_KEY if kind == "centralized" else OWN_ANTHROPIC_KEY
    for seen in llm:
        assert seen.headers["x-api-key"] == expected
        assert seen.headers["x-app"] == "cli" and seen.headers["user-agent"].startswith("claude-cli/2.1.197 ")
    for seen in others:  # relayed as sent: the user's own key stays, nothing is injected
        assert presented(seen.headers) in (None, OWN_ANTHROPIC_KEY if kind == "byok" else None), seen
    if kind == "byok":
        never_leaks(ANTHROPIC_PROVIDER_KEY, fake)

    # One interception per LLM call; the relays are not recorded.
    rows = new_interceptions(gw, before, len(llm))
    assert len(rows) == len(llm), rows
    check_rows(gw, rows, client="Claude Code", provider_name="anthropic", kind=kind, api="messages")
    model = llm[0].json()["model"]
    assert {row["model"] for row in rows} == {model}
    assert {row["client_session_id"] for row in rows} == {output["session_id"]}
    first, *follow_ups = rows
    assert prompts(gw, first["id"]) == [PROMPT]
    assert [t["tool"] for t in children(gw, "aibridge_tool_usages", first["id"])] == [
        llm[0].json()["tools"][0]["name"]]
    assert [t["content"] for t in children(gw, "aibridge_model_thoughts", first["id"])] == ["Let me think."]
    for row in follow_ups:
        assert prompts(gw, row["id"]) == [] and row["thread_parent_id"] == first["id"], row
    for row in rows:  # the masked key that went upstream
        hint = row["credential_hint"]
        assert hint and hint.endswith(expected[-4:]) and expected not in hint, hint


# -- Codex ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_codex_through_the_proxy(gw: Gateway, fake: CliFakeUpstream, tmp_path: Path, transport: str) -> None:
    """Codex's built-in OpenAI provider: Responses over a WebSocket first; when the upstream answers the
    upgrade with 426 it falls back to `POST /v1/responses` (SSE). Both are relayed and recorded."""
    codex = binary("codex")
    if transport == "http":
        fake.refuse_websockets = 426
    bundle = Path(gw.cli("ca", "--bundle", str(tmp_path / "aigw-ca-bundle.pem")).stdout.strip())
    home = tmp_path / "home"
    before = known_ids(gw)
    run = run_proxied([codex, "exec", "--skip-git-repo-check", "--ephemeral", "-m", "gpt-5-codex", PROMPT], home,
                      gw, {"CODEX_HOME": str(home), "CODEX_API_KEY": key(gw), "SSL_CERT_FILE": str(bundle)})
    assert run.returncode == 0, detail(run, gw)
    assert ANSWER in run.stdout, detail(run, gw)

    assert [path for path, _ in fake.ws_handshakes][:1] == ["/v1/responses"], fake.ws_handshakes
    for _, headers in fake.ws_handshakes:
        assert headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
        assert headers["originator"] == "codex_exec"
    posts = [s for s in fake.requests if s.method == "POST" and s.path == "/v1/responses"]
    calls: list[dict[str, Any]]
    if transport == "websocket":
        assert posts == []
        calls = fake.ws_messages
        assert {m["type"] for m in calls} == {"response.create"}
    else:
        assert len(fake.ws_handshakes) == 1  # the 426 is taken at once: no retries of the upgrade
        calls = [s.json() for s in posts]
        for seen in posts:
            assert seen.headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
            assert seen.headers["originator"] == "codex_exec"
    assert len(calls) >= 2, calls
    assert all(c["model"] == "gpt-5-codex" for c in calls)
    never_leaks(key(gw), fake)
    # Nothing but the Responses API reached the instance: chatgpt.com & co. were tunnelled (and failed fast).
    assert {(s.method, s.path) for s in fake.requests} <= {("POST", "/v1/responses"), ("GET", "/v1/models")}, [
        (s.method, s.path) for s in fake.requests]

    rows = new_interceptions(gw, before, len(calls))
    assert len(rows) == len(calls), rows
    check_rows(gw, rows, client="Codex", provider_name="openai", kind="centralized", api="responses")
    assert {row["model"] for row in rows} == {"gpt-5-codex"}
    for row in rows:
        metadata = json.loads(row["metadata"])
        assert metadata.get("transport", "http") == transport, metadata
    # Over the WebSocket Codex first sends a `generate: false` prewarm without the user's turn: one row
    # carries the prompt, and the tool-result turn is threaded to it.
    with_prompt = [row for row in rows if prompts(gw, row["id"])]
    assert len(with_prompt) == 1 and prompts(gw, with_prompt[0]["id"]) == [PROMPT], rows
    assert rows[-1]["thread_parent_id"] == with_prompt[0]["id"], rows
    session = {row["client_session_id"] for row in rows}
    assert len(session) == 1 and f"session id: {session.pop()}" in run.stdout + run.stderr


# -- Copilot CLI (normal mode: GitHub login, Copilot's own models) ----------------------------------


COPILOT_TOKEN = "gho_COPILOT-CLI-USER-TOKEN-0123456789"


def copilot_user(seen: Seen) -> Reply:
    """GitHub's `GET /copilot_internal/user`: the CLI takes the Copilot API host from `endpoints.api`."""
    plan = "individual"
    return json_reply({
        "login": "alice", "copilot_plan": plan, "chat_enabled": True, "access_type_sku": "free_educational",
        "endpoints": {name: f"https://{name}.{plan}.githubcopilot.com"
                      for name in ("api", "proxy", "telemetry", "origin-tracker")}})


def copilot_models(seen: Seen) -> Reply:
    """Copilot's model catalog: `supported_endpoints` decides the wire API the CLI uses."""
    def entry(model: str, vendor: str, endpoint: str) -> dict[str, Any]:
        return {"id": model, "name": model, "object": "model", "vendor": vendor, "version": model,
                "model_picker_enabled": True, "preview": False, "supported_endpoints": [endpoint],
                "capabilities": {"family": model, "type": "chat", "object": "model_capabilities",
                                 "tokenizer": "o200k_base",
                                 "limits": {"max_context_window_tokens": 128000, "max_output_tokens": 16384,
                                            "max_prompt_tokens": 64000},
                                 "supports": {"streaming": True, "tool_calls": True, "parallel_tool_calls": True}}}

    return json_reply({"object": "list", "data": [
        entry(model, vendor, COPILOT_PATHS[api]) for model, vendor, api in COPILOT_MODELS]})


COPILOT_PATHS = {"chat": "/chat/completions", "responses": "/responses", "messages": "/v1/messages"}
COPILOT_MODELS = [("gpt-4o-mini", "Azure OpenAI", "chat"), ("gpt-5-mini", "Azure OpenAI", "responses"),
                  ("claude-sonnet-4.5", "Anthropic", "messages")]


@pytest.mark.parametrize(("model", "api"), [(m, a) for m, _, a in COPILOT_MODELS])
def test_copilot_cli_through_the_proxy(gw: Gateway, fake: CliFakeUpstream, tmp_path: Path, model: str,
                                       api: str) -> None:
    """Copilot CLI logged in with a GitHub token, its model calls going to api.individual.githubcopilot.com.

    The CLI first asks GitHub's API (`GET /copilot_internal/user`, then managed settings, MCP…), a
    non-AI host that would be tunnelled to the internet. `GH_HOST`/`COPILOT_GH_HOST` only turn that
    into `https://api.<host>`, which the gateway would have to dial by name; Copilot CLI 1.0.102 also
    reads `COPILOT_DEBUG_GITHUB_API_URL` (not in `copilot help environment`), which sets the GitHub
    API URL itself: it points at the copilot instance's host (`localhost:<fake port>`), so those
    calls are decrypted and relayed to the fake. The model calls then go to the well-known Copilot
    host, decrypted and mapped to the same instance: recorded, with the user's GitHub token forwarded.
    """
    copilot = binary("copilot")
    fake.routes["/copilot_internal/user"] = copilot_user
    fake.routes["/models"] = copilot_models
    before = known_ids(gw)
    run = run_proxied([copilot, "-p", PROMPT, "--allow-all-tools", "-s"], tmp_path, gw, {
        "NODE_EXTRA_CA_CERTS": str(gateway_ca(gw)), "COPILOT_GITHUB_TOKEN": COPILOT_TOKEN,
        "COPILOT_DEBUG_GITHUB_API_URL": f"https://localhost:{fake.port}", "COPILOT_AUTO_UPDATE": "false",
        "COPILOT_MODEL": model})
    assert run.returncode == 0, detail(run, gw)
    assert ANSWER in run.stdout, detail(run, gw)

    paths = [(s.method, s.path.partition("?")[0]) for s in fake.requests]
    assert ("GET", "/copilot_internal/user") in paths and ("GET", "/models") in paths, paths
    llm = [s for s in fake.requests if (s.method, s.path) == ("POST", COPILOT_PATHS[api])]
    assert len(llm) >= 2, paths
    for seen in fake.requests:  # the user's GitHub token goes everywhere; the gateway key nowhere
        assert presented(seen.headers) in (None, COPILOT_TOKEN), (seen.method, seen.path)
    never_leaks(key(gw), fake)
    for seen in llm:
        assert seen.headers["editor-version"] == "copilot/1.0.102"
        assert seen.headers["copilot-integration-id"] == "copilot-developer-cli"
        assert seen.json()["model"] == model and seen.json()["stream"] is True

    rows = new_interceptions(gw, before, len(llm))
    assert len(rows) == len(llm), rows
    check_rows(gw, rows, client="Copilot CLI", provider_name="copilot", kind="byok", api=api)
    assert {row["model"] for row in rows} == {model}
    assert {row["client_session_id"] for row in rows} == {llm[0].headers["x-client-session-id"]}
    assert {json.loads(row["metadata"])["route"] for row in rows} == {COPILOT_PATHS[api]}
    first, *follow_ups = rows
    assert prompts(gw, first["id"]) == [PROMPT]
    assert len(children(gw, "aibridge_tool_usages", first["id"])) == 1
    for row in rows:
        hint = row["credential_hint"]
        assert hint and hint.endswith(COPILOT_TOKEN[-4:]) and COPILOT_TOKEN not in hint, hint
    for row in follow_ups:
        assert prompts(gw, row["id"]) == [] and row["thread_parent_id"] == first["id"], row
