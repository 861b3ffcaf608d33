"""Addon: gateway routes (`/api/v2/aibridge/<instance>/…`) -> instance, route and identity.

Runs first in the chain. It answers everything that must not reach upstream
(health checks, unknown instances, unknown paths, failed authentication) and
attaches a FlowContext to every flow that may go on.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
from mitmproxy import http

from addons import context
from addons.auth import KeyCache, bearer, presented_credential
from addons.config import Instance, Settings
from addons.context import FlowContext
from addons.providers.base import Api, any_error
from addons.providers.registry import PROVIDERS, error_body

log = logging.getLogger("aigw.routing")

PREFIXES = ("/api/v2/aibridge/", "/api/v2/ai-gateway/")
# Names under the prefix that belong to the gateway itself (see admin.py).
RESERVED = frozenset({"interceptions", "sessions", "admin", "keys", "query", "proxy", "metrics"})
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
    """Origin-form requests to the listener itself (not proxied ones)."""
    return flow.request.first_line_format == "relative" and not context.is_tunnel(flow.client_conn)


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> http.Response:
    return http.Response.make(status, body, {"content-type": "application/json", **(headers or {})})


class Router:
    def __init__(self, settings: Settings, keys: KeyCache) -> None:
        self.settings = settings
        self.keys = keys
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
        parts = split_gateway_path(path)
        if parts is None:
            flow.response = json_response(404, any_error(f"no route for {flow.request.method} "
                                                         f"{flow.request.path.partition('?')[0]}",
                                                         "not_found_error"))
            return
        name, rest, query = parts
        if name in RESERVED:
            return  # the admin API's
        self.route_gateway(flow, name, rest, query)

    def route_gateway(self, flow: http.HTTPFlow, name: str, rest: str, query: str) -> None:
        instance = self.settings.instance(name) if self.settings.enabled else None
        if instance is None:
            flow.response = json_response(404, any_error(f"unknown provider instance {name!r}",
                                                         "not_found_error"))
            return
        provider = PROVIDERS[instance.type]
        api_path = provider.api_path(rest)
        route = provider.route(flow.request.method, api_path) if api_path is not None else None
        if route is None or api_path is None:
            flow.response = json_response(404, error_body(
                instance.type, None, f"route not supported: {flow.request.method} {rest}", "not_found_error"))
            return
        api = route.api
        byok_token = flow.request.headers.get(BYOK_HEADER)
        token = byok_token or presented_credential(flow.request.headers)
        identity = self.keys.authenticate(token, datetime.now(UTC))
        if identity is None:
            why = "missing gateway key" if not token else "invalid, revoked or expired gateway key"
            flow.response = json_response(401, error_body(instance.type, api, why, "authentication_error"))
            return
        byok = byok_token is not None or instance.type == "copilot"
        client_credential = presented_credential(flow.request.headers) if byok else None
        if byok and byok_token is not None and not self.settings.allow_byok:
            flow.response = json_response(403, error_body(
                instance.type, api, "bring-your-own-key is disabled on this gateway", "permission_error"))
            return
        if byok and not client_credential:
            flow.response = json_response(401, error_body(
                instance.type, api, f"instance {instance.name!r} needs your own provider credential",
                "authentication_error"))
            return
        if not byok and not instance.key and instance.bedrock is None:
            flow.response = json_response(502, error_body(
                instance.type, api, f"instance {instance.name!r} has no provider key configured; "
                "send your own credential with the gateway key in X-Aigw-Token", "api_error"))
            return
        context.attach(flow, FlowContext(
            instance=instance, provider=provider, route=route, api_path=api_path, query=query,
            identity=identity, byok=byok, received_at=datetime.now(UTC),
            client_credential=client_credential,
        ))
        if byok_token is None and not byok:
            # The gateway key must not travel upstream.
            flow.request.headers.pop("authorization", None)
            flow.request.headers.pop("x-api-key", None)
        flow.request.headers.pop(BYOK_HEADER, None)


def upstream_url(instance: Instance, api_path: str, query: str) -> str:
    return instance.base_url + api_path + query


def inject_credential(flow: http.HTTPFlow, ctx: FlowContext) -> None:
    """Point the request at the instance and put the right credential on it."""
    flow.request.url = upstream_url(ctx.instance, ctx.api_path, ctx.query)
    if ctx.byok or ctx.instance.key is None:
        return
    headers = flow.request.headers
    if ctx.route.api is Api.MESSAGES or ctx.instance.type == "anthropic":
        headers.pop("authorization", None)
        headers["x-api-key"] = ctx.instance.key
    else:
        headers.pop("x-api-key", None)
        headers["authorization"] = f"Bearer {ctx.instance.key}"


__all__ = ["Router", "bearer", "inject_credential", "is_gateway_request", "json_response",
           "split_gateway_path", "upstream_url"]
