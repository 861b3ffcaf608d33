"""Addon: gateway routes (`/api/v2/aibridge/<instance>/…`) -> instance, route and identity.

Runs right after the proxy addons (addons/chain/proxy.py), which handle tunnelled and
absolute-form requests. It answers everything that must not reach upstream
(health checks, unknown instances, unknown paths, failed authentication) and
attaches a FlowContext to every flow that may go on. `admit` is the one
credential decision (BYOK, 401/403/502) both entry points share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import orjson
from mitmproxy import http

from addons.chain.auth import Identity, KeyCache, looks_like_provider_key, presented_credential
from addons.flow.state import PROXIED, FlowContext, FlowStates
from addons.providers.base import Api, Provider, Route
from addons.providers.errors import any_error, error_body, json_response
from addons.providers.registry import PROVIDERS
from addons.settings.config import Settings
from addons.settings.instances import RESERVED_NAMES, Instance
from addons.sinks.redaction import looks_like_gateway_key, without_query_credentials

log = logging.getLogger("aigw.routing")

PREFIXES = ("/api/v2/aibridge/", "/api/v2/ai-gateway/")
BYOK_HEADER = "x-aigw-token"


def split_gateway_path(path: str) -> tuple[str, str, str] | None:
    """`/api/v2/aibridge/<name>/<rest>?q` -> (name, "/<rest>", "?q"), or None."""
    for prefix in PREFIXES:
        if path.startswith(prefix):
            target, sep, query = path[len(prefix) :].partition("?")
            name, slash, rest = target.partition("/")
            return name, slash + rest, sep + query
    return None


def is_gateway_request(flow: http.HTTPFlow) -> bool:
    """Origin-form requests to the listener itself (not proxied ones: tunnels, absolute-form)."""
    return flow.request.first_line_format == "relative" and PROXIED not in flow.metadata


class Router:
    def __init__(self, settings: Settings, keys: KeyCache, flows: FlowStates,
                 failing: Callable[[], str | None]) -> None:
        self.settings = settings
        self.keys = keys
        self.flows = flows
        # Why records cannot reach the database right now (the recorder's, or a worker's link), or None.
        self.failing = failing
        self.ready = False

    def running(self) -> None:
        self.ready = True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not is_gateway_request(flow):
            return
        path = flow.request.path
        if path == "/healthz" or path.startswith("/healthz?"):
            status = 200 if self.ready else 503
            flow.response = json_response(status, orjson.dumps({"ok": self.ready}))
            return
        if path == "/readyz" or path.startswith("/readyz?"):
            # Not ready while records cannot reach the database (addons/sinks/recorder.py), so a load
            # balancer can drain this replica; /healthz stays 200 because the process still serves.
            reason = "starting" if not self.ready else self.failing()
            flow.response = json_response(503 if reason else 200, orjson.dumps(
                {"ready": False, "reason": reason} if reason else {"ready": True}))
            return
        parts = split_gateway_path(path)
        if parts is None:
            flow.response = json_response(404, any_error(
                f"no route for {flow.request.method} {flow.request.path.partition('?')[0]}: the client's base URL "
                f"must include {PREFIXES[0]}<instance> (instances here: {self.instance_names()})", "not_found_error"))
            return
        name, rest, query = parts
        if name in RESERVED_NAMES:
            return  # the admin API's
        self.route_gateway(flow, name, rest, query)

    def instance_names(self) -> str:
        return ", ".join(i.name for i in self.settings.instances) if self.settings.enabled else "none (disabled)"

    def route_gateway(self, flow: http.HTTPFlow, name: str, rest: str, query: str) -> None:
        instance = self.settings.instance(name) if self.settings.enabled else None
        if instance is None:
            flow.response = json_response(404, any_error(
                f"unknown provider instance {name!r} (instances here: {self.instance_names()})"
                if self.settings.enabled else "AI Bridge is disabled on this gateway", "not_found_error"))
            return
        provider = PROVIDERS[instance.type]
        api_path = provider.api_path(rest)
        route = classify_route(provider, flow.request.method, api_path, flow.request.headers) \
            if api_path is not None else None
        if route is None or api_path is None:
            flow.response = json_response(404, error_body(
                instance.type, None, f"route not supported: {flow.request.method} {rest}", "not_found_error"))
            return
        api = route.api
        byok_token = flow.request.headers.get(BYOK_HEADER, "").strip() or None  # empty: absent
        presented = presented_credential(flow.request.headers)
        token = byok_token or presented
        identity = self.keys.authenticate(token, datetime.now(UTC))
        if identity is None:
            why = "missing gateway key" if not token else "invalid, revoked or expired gateway key"
            if byok_token is None and token and looks_like_provider_key(token):
                why = ("this is a provider key, not a gateway key: send your gateway key instead"
                       + (", or keep your own key and send the gateway key in X-Aigw-Token (bring-your-own-key)"
                          if self.settings.allow_byok else ""))
            flow.response = json_response(401, error_body(instance.type, api, why, "authentication_error"))
            return
        byok = byok_token is not None or provider.client_credential_only
        # The gateway key (sent twice, or on Copilot in place of the GitHub token) is never the client's own.
        own = presented if byok and not self.keys.is_gateway_credential(presented, token) else None
        credential = Credential(byok=byok, explicit=byok_token is not None, client_credential=own)
        admit(self.flows, flow, self.settings, instance, provider, route, api_path, query, identity, credential)


@dataclass(frozen=True, slots=True)
class Credential:
    """Which credential a request carries upstream."""

    byok: bool  # the client's own credential goes upstream untouched
    explicit: bool  # the client chose BYOK (refused when BYOK is disabled); Copilot's is inherent
    client_credential: str | None = None  # the BYOK credential (recorded only as a masked hint)


# Where a client that must bring its own credential is told to put the gateway key.
OWN_KEY_HINTS = {
    "gateway": "send your own credential with the gateway key in X-Aigw-Token",
    "proxy": "send your own provider credential (the gateway key travels as the proxy password)",
}


def admission_error(settings: Settings, instance: Instance, api: Api | None, credential: Credential,
                    mode: str) -> http.Response | None:
    """The one credential decision for gateway routes and the proxy: None, or the error to answer."""
    if credential.byok and credential.explicit and not settings.allow_byok:
        return json_response(403, error_body(
            instance.type, api, "bring-your-own-key is disabled on this gateway", "permission_error"))
    if credential.byok and not credential.client_credential:
        return json_response(401, error_body(
            instance.type, api, f"instance {instance.name!r} needs your own provider credential (a gateway key "
            f"is not one): {OWN_KEY_HINTS.get(mode, OWN_KEY_HINTS['gateway'])}", "authentication_error"))
    if not credential.byok and not instance.key and instance.bedrock is None:
        return json_response(502, error_body(
            instance.type, api, f"instance {instance.name!r} has no provider key configured; "
            f"{OWN_KEY_HINTS.get(mode, OWN_KEY_HINTS['gateway'])}", "api_error"))
    return None


def admit(flows: FlowStates, flow: http.HTTPFlow, settings: Settings, instance: Instance, provider: Provider,
          route: Route, api_path: str, query: str, identity: Identity, credential: Credential,
          mode: Literal["gateway", "proxy"] = "gateway") -> FlowContext | None:
    """Admit an authenticated request to an instance route: attach its FlowContext, or answer the error."""
    error = admission_error(settings, instance, route.api, credential, mode)
    if error is not None:
        flow.response = error
        return None
    if query:
        # Credentials are never accepted in the query string, and never sent on (README "Security").
        stripped = without_query_credentials(query)
        if stripped != query:
            flow.request.path = flow.request.path.partition("?")[0] + stripped
            query = stripped
    ctx = FlowContext(
        instance=instance, provider=provider, route=route, api_path=api_path, query=query,
        identity=identity, byok=credential.byok, received_at=datetime.now(UTC),
        client_credential=credential.client_credential, mode=mode,
    )
    flows.attach(flow, ctx)
    headers = flow.request.headers
    for name in ("authorization", "x-api-key"):
        # The gateway key must not travel upstream: without BYOK no client credential does; with it, a
        # gateway key next to the client's own (e.g. `Authorization: Bearer aigw_…`) is dropped too.
        if name in headers and (not credential.byok or looks_like_gateway_key(headers[name])):
            del headers[name]
    headers.pop(BYOK_HEADER, None)
    return ctx


# Codex's Responses API over a WebSocket: relayed like a passthrough route; the
# WebSocket recorder turns each `response.create` into one interception.
WEBSOCKET_RESPONSES = Route(None, "/responses (websocket)")


def is_websocket_upgrade(headers: http.Headers) -> bool:
    return "websocket" in headers.get("upgrade", "").lower()


def classify_route(provider: Provider, method: str, api_path: str, headers: http.Headers) -> Route | None:
    """The route of a request on an instance; None: not supported."""
    if method == "GET" and api_path == "/responses" and provider.websocket_responses and is_websocket_upgrade(headers):
        return WEBSOCKET_RESPONSES
    return provider.route(method, api_path)


__all__ = ["WEBSOCKET_RESPONSES", "Credential", "Router", "admission_error", "admit", "classify_route",
           "is_gateway_request", "split_gateway_path"]
