"""The transparent proxy's pure policy (host map, addresses, ports, proxy credential) and its
per-request decisions, driven with mitmproxy's test flows (no sockets)."""

from __future__ import annotations

import base64
import ipaddress
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.chain.auth import KeyCache
from addons.chain.proxy import ProxyAuth, ProxyRouter, TlsPolicy
from addons.chain.proxy_address import AddressGuard
from addons.chain.proxy_policy import (
    ProxyAuthError,
    blocked_reason,
    build_host_map,
    configured_destinations,
    describe_host_map,
    parse_ports,
    proxy_password,
)
from addons.chain.proxy_state import ProxyState, Tunnel
from addons.chain.routing import WEBSOCKET_RESPONSES
from addons.flow.state import PROXIED, TUNNELLED, FlowStates
from addons.settings import loader
from addons.settings.config import Settings
from addons.store.keys import KeyInfo, hash_key

P = "CODER_AIBRIDGE_PROVIDER_"
LOCAL = "https://127.0.0.1:9443"


def settings(**env: str) -> Settings:
    return loader.load(None, env)


def instances(*specs: tuple[str, str, str]) -> dict[str, str]:
    """(type, name, base_url) triples as indexed environment variables."""
    env: dict[str, str] = {}
    for n, (type_, name, url) in enumerate(specs):
        env |= {f"{P}{n}_TYPE": type_, f"{P}{n}_NAME": name, f"{P}{n}_BASE_URL": url}
        if type_ != "copilot":
            env[f"{P}{n}_KEY"] = f"sk-{name}-key-0123456789abcdef"
    return env


def table(s: Settings) -> dict[str, tuple[str, str]]:
    host_map = build_host_map(s)
    return {host: (t[0].instance.name, t[0].base_path) for host, t in host_map.targets.items()}


# -- host -> instance ------------------------------------------------------------------------


def test_default_instances_decrypt_only_their_own_hosts() -> None:
    assert table(settings()) == {"api.openai.com": ("openai", "/v1"), "api.anthropic.com": ("anthropic", "")}


def test_well_known_hosts_follow_instances_pointed_elsewhere() -> None:
    s = settings(**instances(("anthropic", "anthropic", "https://llm.corp.example/anthropic"),
                             ("openai", "openai", LOCAL + "/v1"),
                             ("copilot", "copilot", LOCAL),
                             ("openai", "chatgpt", LOCAL + "/backend-api/codex")))
    got = table(s)
    assert got["llm.corp.example"] == ("anthropic", "/anthropic")
    assert got["api.anthropic.com"] == ("anthropic", "")  # the well-known host, its own API root
    assert got["api.openai.com"] == ("openai", "/v1")
    for plan in ("individual", "business", "enterprise"):
        assert got[f"api.{plan}.githubcopilot.com"] == ("copilot", "")
    assert got["chatgpt.com"] == ("chatgpt", "/backend-api/codex")
    assert [t.instance.name for t in build_host_map(s).targets["127.0.0.1"]] == ["openai", "copilot", "chatgpt"]


def test_an_instance_on_one_copilot_plan_does_not_swallow_the_others() -> None:
    got = table(settings(**instances(("copilot", "copilot", "https://api.individual.githubcopilot.com"))))
    assert "api.individual.githubcopilot.com" in got
    assert "api.business.githubcopilot.com" not in got and "api.enterprise.githubcopilot.com" not in got
    got = table(settings(**instances(("copilot", "copilot", "https://api.individual.githubcopilot.com"),
                                     ("copilot", "copilot-ent", "https://api.enterprise.githubcopilot.com"))))
    assert got["api.enterprise.githubcopilot.com"] == ("copilot-ent", "")


def test_chatgpt_is_only_the_openai_instance_named_chatgpt() -> None:
    got = table(settings(**instances(("openai", "chatgpt", LOCAL + "/backend-api/codex"))))
    assert got["chatgpt.com"] == ("chatgpt", "/backend-api/codex")
    assert "api.openai.com" not in got  # an OpenAI API key must not be sent to the ChatGPT backend
    got = table(settings(**instances(("openai", "work", LOCAL + "/v1"))))
    assert "chatgpt.com" not in got and got["api.openai.com"] == ("work", "/v1")
    got = table(settings(**instances(("openai", "chatgpt", "https://chatgpt.com/backend-api/codex"))))
    assert got["chatgpt.com"] == ("chatgpt", "/backend-api/codex")


def test_first_configured_wins_and_the_longest_base_path_picks_per_request() -> None:
    s = settings(**instances(("openai", "team-a", "https://llm.corp.example/v1"),
                             ("openai", "team-b", "https://llm.corp.example/v1"),
                             ("anthropic", "claude", "https://llm.corp.example/claude")))
    host_map = build_host_map(s)
    first = host_map.match("LLM.corp.example.", "/v1/chat/completions")
    assert first is not None and (first.instance.name, first.api_path) == ("team-a", "/chat/completions")
    claude = host_map.match("llm.corp.example", "/claude/v1/messages")
    assert claude is not None and (claude.instance.name, claude.api_path) == ("claude", "/v1/messages")
    outside = host_map.match("llm.corp.example", "/health")
    assert outside is not None and (outside.instance.name, outside.api_path) == ("team-a", None)
    assert host_map.match("example.com", "/") is None


def test_api_paths_on_well_known_hosts() -> None:
    host_map = build_host_map(settings(**instances(("openai", "openai", LOCAL + "/v1"),
                                                   ("openai", "chatgpt", LOCAL + "/backend-api/codex"))))
    cases = {("api.openai.com", "/v1/responses"): "/responses", ("api.openai.com", "/v1"): "/",
             ("api.openai.com", "/v1beta/x"): None, ("chatgpt.com", "/backend-api/codex/responses"): "/responses",
             ("chatgpt.com", "/backend-api/wham/usage"): None}
    for (host, path), api_path in cases.items():
        match = host_map.match(host, path)
        assert match is not None and match.api_path == api_path, (host, path)


def test_disabled_gateway_decrypts_nothing() -> None:
    s = settings(CODER_AIBRIDGE_ENABLED="false")
    assert build_host_map(s).targets == {}
    assert "nothing is decrypted" in describe_host_map(build_host_map(s))[0]


def test_describe_host_map() -> None:
    lines = describe_host_map(build_host_map(settings(**instances(("anthropic", "anthropic", LOCAL),
                                                                  ("openai", "openai", LOCAL + "/v1")))))
    text = "\n".join(lines)
    assert "api.anthropic.com" in text and "-> anthropic (well-known anthropic host)" in text
    assert "127.0.0.1" in text and "also openai for /v1" in text
    assert "not decrypted (no instance of their kind): api.business.githubcopilot.com" in text


def test_configured_destinations_include_base_urls_and_bedrock() -> None:
    s = settings(**{**instances(("openai", "openai", "http://10.0.0.5/v1")),
                    "CODER_AIBRIDGE_ANTHROPIC_KEY": "sk-ant-0123456789abcdef",
                    "CODER_AIBRIDGE_BEDROCK_REGION": "eu-west-1", "CODER_AIBRIDGE_BEDROCK_MODEL": "m",
                    "CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL": "s"})
    assert configured_destinations(s) >= {("10.0.0.5", 80), ("api.anthropic.com", 443),
                                          ("bedrock-runtime.eu-west-1.amazonaws.com", 443)}


# -- addresses, ports, credentials -----------------------------------------------------------


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("100.64.0.1", "reserved"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"), ("::1", "loopback"), ("fe80::1", "link-local"),
    ("fc00::1", "private"), ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a00:1", "private"), ("2002:a00:1::", "private"), ("::", "unspecified"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("::ffff:8.8.8.8", None),
])
def test_blocked_addresses(address: str, reason: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


def test_allowed_cidrs_open_private_ranges() -> None:
    allowed = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.20.0.0/16"))
    assert blocked_reason(ipaddress.ip_address("127.0.0.2"), allowed) is None
    assert blocked_reason(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert blocked_reason(ipaddress.ip_address("10.20.3.4"), allowed) is None
    assert blocked_reason(ipaddress.ip_address("10.21.3.4"), allowed) == "private"
    assert blocked_reason(ipaddress.ip_address("::1"), allowed) == "loopback"


def test_ports() -> None:
    assert parse_ports("80, 443,8443") == {80, 443, 8443}
    for bad in ("", "0", "70000", "http"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_proxy_password() -> None:
    assert proxy_password(f"Basic {b64('aigw:aigw_1_secret')}") == "aigw_1_secret"
    assert proxy_password(f"basic {b64('anyone:a:b:c')}") == "a:b:c"  # the user name is ignored
    for header, words in [(None, "required"), ("", "required"), ("Bearer x", "scheme"),
                          ("Basic %%%", "base64"), (f"Basic {b64('nocolon')}", "user:password"),
                          (f"Basic {b64('aigw:')}", "password"), ("Basic", "user:password")]:
        with pytest.raises(ProxyAuthError, match=words):
            proxy_password(header)


# -- per-request decisions (mitmproxy test flows) --------------------------------------------

SECRET = "aigw_0000abcd_the-users-gateway-key-aaaaaaaaaaaaaaaa"


def key_cache() -> KeyCache:
    info = KeyInfo(id="aigw_0000abcd", user_id="u-1", user_name="alice", admin=False,
                   created_at=datetime.now(UTC), expires_at=None, revoked_at=None, last_used_at=None)
    return KeyCache({hash_key(SECRET): info})


def proxy_settings(**extra: str) -> Settings:
    return settings(**instances(("anthropic", "anthropic", LOCAL), ("openai", "openai", LOCAL + "/v1"),
                                ("copilot", "copilot", LOCAL)), **extra)


FLOWS = FlowStates()  # what the proxy router admitted, in run()


def tunnelled_flow(state: ProxyState, host: str, path: str, method: str = "POST",
                   **headers: str) -> http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(method=method.encode(), scheme=b"https", host=host, port=443,
                                       path=path.encode(), headers=http.Headers(**headers), content=b"{}"))
    keys = key_cache()
    identity = keys.authenticate(SECRET, datetime.now(UTC))
    assert identity is not None
    state.tunnels[flow.client_conn] = Tunnel(host, SECRET, state.host_map.decrypts(host))
    flow.metadata[PROXIED] = TUNNELLED  # as the HTTP layer marks requests inside a tunnel
    return flow


def run(host: str, path: str, s: Settings | None = None, method: str = "POST",
        **headers: str) -> tuple[http.HTTPFlow, ProxyState]:
    s = s or proxy_settings()
    state = ProxyState.from_settings(s)
    flow = tunnelled_flow(state, host, path, method, **headers)
    ProxyRouter(s, key_cache(), state, FLOWS).requestheaders(flow)
    return flow, state


def test_no_credential_or_the_gateway_key_gets_the_instance_key() -> None:
    for headers in ({}, {"x_api_key": SECRET}, {"authorization": f"Bearer {SECRET}"}):
        flow, _ = run("api.anthropic.com", "/v1/messages?beta=true", **headers)
        ctx = FLOWS.get(flow)
        assert ctx is not None and flow.response is None
        assert (ctx.instance.name, ctx.api_path, ctx.query, ctx.byok) == ("anthropic", "/v1/messages", "?beta=true",
                                                                          False)
        assert ctx.mode == "proxy" and ctx.identity.user_name == "alice"
        assert "x-api-key" not in flow.request.headers and "authorization" not in flow.request.headers


def test_any_other_credential_is_byok() -> None:
    flow, _ = run("api.openai.com", "/v1/chat/completions", authorization="Bearer sk-own-key-123456",
                  x_aigw_token=SECRET)
    ctx = FLOWS.get(flow)
    assert ctx is not None and ctx.byok and ctx.client_credential == "sk-own-key-123456"
    assert flow.request.headers["authorization"] == "Bearer sk-own-key-123456"
    assert "x-aigw-token" not in flow.request.headers


def test_byok_refused_when_disabled() -> None:
    flow, _ = run("api.openai.com", "/v1/chat/completions", proxy_settings(CODER_AIBRIDGE_ALLOW_BYOK="false"),
                  authorization="Bearer sk-own-key-123456")
    assert flow.response is not None and flow.response.status_code == 403


def test_copilot_always_forwards_the_users_token() -> None:
    flow, _ = run("api.business.githubcopilot.com", "/responses", authorization="Bearer gho_token",
                  editor_version="vscode/1.99")
    ctx = FLOWS.get(flow)
    assert ctx is not None and ctx.byok and ctx.client_credential == "gho_token"
    flow, _ = run("api.individual.githubcopilot.com", "/chat/completions", authorization=f"Bearer {SECRET}")
    assert flow.response is not None and flow.response.status_code == 401
    flow, _ = run("api.individual.githubcopilot.com", "/models", method="GET", authorization="Bearer gho_token")
    ctx = FLOWS.get(flow)
    assert ctx is not None and not ctx.route.intercepted  # passthrough, not recorded


def test_websocket_upgrade_on_responses_is_the_websocket_route() -> None:
    flow, _ = run("api.openai.com", "/v1/responses", method="GET", upgrade="websocket", connection="Upgrade")
    ctx = FLOWS.get(flow)
    assert ctx is not None and ctx.route is WEBSOCKET_RESPONSES and not ctx.byok


def test_non_api_paths_are_relayed_without_the_gateway_key() -> None:
    flow, state = run("api.anthropic.com", "/api/claude_code/settings", method="GET", x_api_key=SECRET)
    assert FLOWS.get(flow) is None and flow.response is None and flow in state.relays
    assert flow.request.url == LOCAL + "/api/claude_code/settings"
    assert "x-api-key" not in flow.request.headers
    flow, state = run("api.openai.com", "/dashboard?x=1", method="GET")
    assert flow in state.relays and flow.request.url == LOCAL + "/dashboard?x=1"


def test_non_ai_hosts_are_relayed_untouched() -> None:
    flow, state = run("example.com", "/index.html", method="GET", authorization="Bearer not-ours")
    assert FLOWS.get(flow) is None and flow in state.relays
    assert flow.request.host == "example.com" and flow.request.headers["authorization"] == "Bearer not-ours"


def test_tls_policy_tunnels_only_what_is_not_decrypted() -> None:
    state = ProxyState.from_settings(proxy_settings())
    policy = TlsPolicy(state)
    for host, ignored in (("api.anthropic.com", False), ("example.com", True)):
        flow = tunnelled_flow(state, host, "/")
        data = SimpleNamespace(context=SimpleNamespace(client=flow.client_conn), ignore_connection=False)
        policy.tls_clienthello(data)  # type: ignore[arg-type]
        assert data.ignore_connection is ignored


async def connect_flow(auth: ProxyAuth, target: tuple[str, int], header: str | None) -> http.HTTPFlow:
    headers = http.Headers(**({"proxy_authorization": header} if header is not None else {}))
    flow = tflow.tflow(req=tutils.treq(method=b"CONNECT", host=target[0], port=target[1], path=b"",
                                       authority=f"{target[0]}:{target[1]}".encode(), headers=headers))
    await auth.http_connect(flow)
    return flow


async def test_connect_authentication_and_destination_policy() -> None:
    s = proxy_settings()
    state = ProxyState.from_settings(s)
    auth = ProxyAuth(s, key_cache(), state, AddressGuard(s, state), FlowStates())
    good = f"Basic {b64('aigw:' + SECRET)}"

    flow = await connect_flow(auth, ("api.anthropic.com", 443), None)
    assert flow.response is not None and flow.response.status_code == 407
    assert flow.response.headers["proxy-authenticate"] == 'Basic realm="aigw"'
    assert flow.client_conn not in state.tunnels

    flow = await connect_flow(auth, ("api.anthropic.com", 443), good)
    assert flow.response is None and state.tunnels[flow.client_conn].decrypted
    assert flow.client_conn in state.tunnels

    for target, status in ((("10.0.0.1", 443), 403), (("api.anthropic.com", 8443), 403),
                           (("8.8.8.8", 443), None)):
        flow = await connect_flow(auth, target, good)
        assert (flow.response.status_code if flow.response else None) == status, target
    assert state.pins[flow.client_conn] == {("8.8.8.8", 443): "8.8.8.8"}


async def test_dial_time_check_pins_and_refuses() -> None:
    s = settings(**instances(("openai", "openai", "https://10.9.9.9/v1")),
                 CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS="127.0.0.0/8")
    state = ProxyState.from_settings(s)
    guard = AddressGuard(s, state)
    client = tflow.tclient_conn()

    def data(host: str, port: int) -> SimpleNamespace:
        return SimpleNamespace(client=client, server=SimpleNamespace(address=(host, port), via=None, error=None))

    configured = data("10.9.9.9", 443)  # an administrator's base URL: private is fine
    await guard.server_connect(configured)  # type: ignore[arg-type]
    assert configured.server.error is None
    metadata = data("169.254.169.254", 80)
    await guard.server_connect(metadata)  # type: ignore[arg-type]
    assert "link-local" in metadata.server.error
    state.pins[client] = {("rebinding.example", 443): "93.184.216.34"}
    pinned = data("rebinding.example", 443)
    await guard.server_connect(pinned)  # type: ignore[arg-type]
    assert pinned.server.address == ("93.184.216.34", 443) and pinned.server.error is None
    local = data("localhost", 443)  # resolved now: 127.0.0.1 is allowed here
    await guard.server_connect(local)  # type: ignore[arg-type]
    assert local.server.error is None and local.server.address == ("127.0.0.1", 443)
