"""The gateway Router's requestheaders hook, run in process through mitmproxy's addon manager: health,
unknown instances, authentication errors in each provider's shape, the FlowContext an admitted request
gets, and the bring-your-own-key decisions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from mitmproxy import hooks, http
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook
from mitmproxy.test import taddons, tflow, tutils

from addons.chain.auth import KeyCache
from addons.chain.routing import Router
from addons.flow.state import PROXIED, TUNNELLED, FlowContext, FlowStates
from addons.providers.base import Api
from addons.settings import loader
from addons.store.keys import KeyInfo, hash_key

P = "CODER_AIBRIDGE_PROVIDER_"
BASE = "/api/v2/aibridge"
KEY = "aigw_0000abcd_the-users-gateway-key-aaaaaaaaaaaaaaaa"
ANTHROPIC_KEY = "sk-ant-api03-instance-key-0123456789abcdef"
OWN_KEY = "sk-own-openai-key-0123456789abcdef"


def router(**env: str) -> Router:
    settings = loader.load(None, {
        f"{P}0_TYPE": "anthropic", f"{P}0_KEY": ANTHROPIC_KEY, f"{P}0_BASE_URL": "https://127.0.0.1:9443",
        f"{P}1_TYPE": "openai", f"{P}1_KEY": "sk-openai-instance-key-0123456789", f"{P}1_BASE_URL": "https://127.0.0.1:9443/v1",
        f"{P}2_TYPE": "copilot", f"{P}2_BASE_URL": "https://127.0.0.1:9443", **env})
    info = KeyInfo(id="aigw_0000abcd", user_id="u-1", user_name="alice", admin=False,
                   created_at=datetime.now(UTC), expires_at=None, revoked_at=None, last_used_at=None)
    return Router(settings, KeyCache({hash_key(KEY): info}), FlowStates(), lambda: None)


@pytest.fixture
def gateway() -> Iterator[tuple[Router, taddons.context]]:
    addon = router()
    with taddons.context(addon) as tctx:
        tctx.master.addons.invoke_addon_sync(addon, hooks.RunningHook())
        yield addon, tctx


def request(path: str, method: str = "POST", **headers: str) -> http.HTTPFlow:
    return tflow.tflow(req=tutils.treq(method=method.encode(), path=path.encode(), host="127.0.0.1", port=8888,
                                       headers=http.Headers(host="127.0.0.1:8888", **headers), content=b"{}"))


async def send(tctx: taddons.context, addon: Router, flow: http.HTTPFlow) -> dict[str, Any]:
    """Run the hook; the answer's JSON body ({} when the request goes on)."""
    await tctx.master.addons.invoke_addon(addon, HttpRequestHeadersHook(flow))
    return orjson.loads(flow.response.content or b"{}") if flow.response is not None else {}


def admitted(addon: Router, flow: http.HTTPFlow) -> FlowContext:
    ctx = addon.flows.get(flow)
    assert ctx is not None and flow.response is None, flow.response and flow.response.content
    return ctx


async def test_health_follows_the_running_hook() -> None:
    addon = router()
    with taddons.context(addon) as tctx:
        starting = request("/healthz", "GET")
        assert await send(tctx, addon, starting) == {"ok": False} and starting.response is not None
        assert starting.response.status_code == 503
        tctx.master.addons.invoke_addon_sync(addon, hooks.RunningHook())
        ready = request("/healthz?verbose=1", "GET")
        assert await send(tctx, addon, ready) == {"ok": True} and ready.response is not None
        assert ready.response.status_code == 200


async def test_unknown_instance_is_404(gateway: tuple[Router, taddons.context]) -> None:
    addon, tctx = gateway
    flow = request(f"{BASE}/nope/v1/messages", **{"x-api-key": KEY})
    body = await send(tctx, addon, flow)
    assert flow.response is not None and flow.response.status_code == 404
    assert body["error"]["type"] == "not_found_error" and "unknown provider instance 'nope'" in body["error"]["message"]
    assert addon.flows.get(flow) is None


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "missing gateway key"),
    ({"x-api-key": "aigw_0000abcd_not-the-key-bbbbbbbbbbbbbbbbbbbbbb"}, "invalid, revoked or expired gateway key"),
    ({"x-api-key": ANTHROPIC_KEY}, "this is a provider key, not a gateway key"),
])
async def test_authentication_errors_in_the_anthropic_shape(gateway: tuple[Router, taddons.context],
                                                            headers: dict[str, str], why: str) -> None:
    addon, tctx = gateway
    flow = request(f"{BASE}/anthropic/v1/messages", **headers)
    body = await send(tctx, addon, flow)
    assert flow.response is not None and flow.response.status_code == 401
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert body["error"]["message"].startswith(why)
    assert addon.flows.get(flow) is None


async def test_authentication_errors_in_the_openai_shape(gateway: tuple[Router, taddons.context]) -> None:
    addon, tctx = gateway
    flow = request(f"{BASE}/openai/v1/chat/completions", authorization="Bearer not-a-key")
    body = await send(tctx, addon, flow)
    assert flow.response is not None and flow.response.status_code == 401
    assert "type" not in body and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == "invalid, revoked or expired gateway key"


async def test_a_valid_key_attaches_the_context_and_never_goes_upstream(
        gateway: tuple[Router, taddons.context]) -> None:
    addon, tctx = gateway
    flow = request(f"{BASE}/anthropic/v1/messages?beta=true&key={KEY}", **{"x-api-key": KEY})
    await send(tctx, addon, flow)
    ctx = admitted(addon, flow)
    assert (ctx.instance.name, ctx.route.api, ctx.api_path, ctx.query) == ("anthropic", Api.MESSAGES,
                                                                           "/v1/messages", "?beta=true")
    assert (ctx.identity.user_name, ctx.identity.key_id, ctx.byok, ctx.mode) == ("alice", "aigw_0000abcd", False,
                                                                                 "gateway")
    assert ctx.client_credential is None and ctx.interception is None
    assert "x-api-key" not in flow.request.headers and KEY not in flow.request.path


async def test_proxied_requests_are_not_the_routers(gateway: tuple[Router, taddons.context]) -> None:
    addon, tctx = gateway
    flow = request(f"{BASE}/anthropic/v1/messages", **{"x-api-key": KEY})
    flow.metadata[PROXIED] = TUNNELLED
    assert await send(tctx, addon, flow) == {}
    assert flow.response is None and addon.flows.get(flow) is None


async def test_byok_sends_the_clients_own_key(gateway: tuple[Router, taddons.context]) -> None:
    addon, tctx = gateway
    flow = request(f"{BASE}/openai/v1/chat/completions", authorization=f"Bearer {OWN_KEY}", x_aigw_token=KEY)
    await send(tctx, addon, flow)
    ctx = admitted(addon, flow)
    assert ctx.byok and ctx.client_credential == OWN_KEY and ctx.identity.user_name == "alice"
    assert flow.request.headers["authorization"] == f"Bearer {OWN_KEY}" and "x-aigw-token" not in flow.request.headers


async def test_byok_without_an_own_key_is_401(gateway: tuple[Router, taddons.context]) -> None:
    """The gateway key sent twice is not the client's own credential."""
    addon, tctx = gateway
    flow = request(f"{BASE}/openai/v1/chat/completions", authorization=f"Bearer {KEY}", x_aigw_token=KEY)
    body = await send(tctx, addon, flow)
    assert flow.response is not None and flow.response.status_code == 401
    assert "needs your own provider credential" in body["error"]["message"]
    assert addon.flows.get(flow) is None


async def test_byok_refused_when_disabled() -> None:
    addon = router(CODER_AIBRIDGE_ALLOW_BYOK="false")
    with taddons.context(addon) as tctx:
        flow = request(f"{BASE}/anthropic/v1/messages", **{"x-api-key": OWN_KEY, "x-aigw-token": KEY})
        body = await send(tctx, addon, flow)
        assert flow.response is not None and flow.response.status_code == 403
        assert body["error"] == {"type": "permission_error",
                                 "message": "bring-your-own-key is disabled on this gateway"}
        assert addon.flows.get(flow) is None


async def test_copilot_is_always_the_users_own_token(gateway: tuple[Router, taddons.context]) -> None:
    addon, tctx = gateway
    flow = request(f"{BASE}/copilot/chat/completions", authorization="Bearer gho_users_token", x_aigw_token=KEY)
    await send(tctx, addon, flow)
    ctx = admitted(addon, flow)
    assert ctx.byok and ctx.client_credential == "gho_users_token"
    only_gateway_key = request(f"{BASE}/copilot/chat/completions", authorization=f"Bearer {KEY}")
    await send(tctx, addon, only_gateway_key)
    assert only_gateway_key.response is not None and only_gateway_key.response.status_code == 401
