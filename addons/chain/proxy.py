"""Addons: the transparent intercepting proxy on the gateway's listener.

A client sets `HTTPS_PROXY=http://aigw:<gateway key>@host:8888` and trusts the
gateway CA. Then, in chain order:

- `ProxyAuth` authenticates `Proxy-Authorization: Basic` on CONNECT and on
  plain-HTTP absolute-form requests (407 otherwise, for every host: never an open
  relay), enforces the port policy and, for hosts that are not decrypted, the
  address policy (403 for private/loopback/link-local/reserved targets), and
  remembers the identity for the tunnel.
- `AddressGuard` (proxy_address.py) re-checks the address actually dialled (`server_connect`) and
  pins it to the one checked, so DNS rebinding cannot reach a refused address.
- `TlsPolicy` decides per connection: decrypt the AI hosts, tunnel everything
  else untouched (`ignore_connection`; the client sees the origin's certificate).
  mitmproxy's allow_hosts would be global across listeners and break gateway routes.
- `ProxyRouter` maps each decrypted request to an instance and route
  (proxy_policy.HostMap) and admits it with the same function as gateway routes
  (routing.admit), so key injection, BYOK and recording are identical.

Decrypted hosts are never dialled by name: their requests are rewritten to the
instance base URL (connection_strategy=lazy), which an administrator configured.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx as mitm_ctx
from mitmproxy import exceptions, http, tls

from addons.chain.auth import Identity, KeyCache, presented_credential
from addons.chain.guard import allow_upstream
from addons.chain.proxy_address import AddressGuard
from addons.chain.proxy_policy import (
    DEFAULT_PORTS,
    Match,
    ProxyAuthError,
    normalise_host,
    parse_ports,
    proxy_password,
)
from addons.chain.proxy_state import ProxyAuthResult, ProxyState, Tunnel
from addons.chain.routing import BYOK_HEADER, Credential, admit, classify_route
from addons.flow.state import ABSOLUTE_FORM, PROXIED, TUNNELLED, FlowStates
from addons.providers.base import Api
from addons.providers.bedrock import BEDROCK
from addons.providers.errors import Refusal, any_error, error_body, json_response
from addons.providers.registry import PROVIDERS
from addons.settings.config import Settings
from addons.settings.instances import Instance
from addons.sinks import metrics
from addons.sinks.redaction import without_query_credentials
from addons.upstreams.aws import client_aws_credential
from addons.upstreams.bedrock_native import native_instance

log = logging.getLogger("aigw.proxy")

REALM = 'Basic realm="aigw"'
HOP_HEADER = "proxy-authorization"


def proxy_error(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> http.Response:
    return json_response(status, any_error(message, error_type), headers)


def proxy_auth_required(message: str) -> http.Response:
    return proxy_error(407, message, "authentication_error", {"proxy-authenticate": REALM})


# -- authentication ------------------------------------------------------------------------


class ProxyAuth:
    """Addon: Proxy-Authorization on CONNECT and absolute-form requests, ports, destinations."""

    # mitmproxy names addons by class; its own "proxyauth" exists already.
    name = "aigw_proxy_auth"

    def __init__(self, settings: Settings, keys: KeyCache, state: ProxyState, guard: AddressGuard,
                 flows: FlowStates) -> None:
        self.settings = settings
        self.keys = keys
        self.state = state
        self.guard = guard
        self.flows = flows
        self.ports: frozenset[int] = frozenset(DEFAULT_PORTS)

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_proxy_allowed_ports", str, ",".join(map(str, DEFAULT_PORTS)),
                          "Comma-separated ports the proxy accepts in CONNECT and plain-HTTP proxy requests.")

    def configure(self, updated: set[str]) -> None:
        if "aigw_proxy_allowed_ports" in updated:
            try:
                self.ports = parse_ports(mitm_ctx.options.aigw_proxy_allowed_ports)
            except ValueError as e:
                raise exceptions.OptionsError(f"aigw_proxy_allowed_ports: {e}") from None

    def authenticate(self, flow: http.HTTPFlow) -> ProxyAuthResult | None:
        """The identity behind the proxy credential, or None with a 407 set on the flow."""
        header = flow.request.headers.get(HOP_HEADER)
        flow.request.headers.pop(HOP_HEADER, None)  # never forwarded
        try:
            secret = proxy_password(header)
            identity = self.keys.authenticate(secret, datetime.now(UTC))
            if identity is None:
                raise ProxyAuthError("invalid, revoked or expired gateway key in the proxy password")
        except ProxyAuthError as e:
            flow.response = proxy_auth_required(str(e))
            metrics.PROXY_AUTH_FAILURES.inc()
            log.info("proxy: 407 for %s %s from %s: %s", flow.request.method, flow.request.pretty_host,
                     flow.client_conn.peername[0] if flow.client_conn.peername else "?", e)
            return None
        return ProxyAuthResult(identity, secret)

    async def admit_target(self, flow: http.HTTPFlow, host: str, port: int) -> bool:
        """Port and address policy for a destination the client named; False with a 403/502 set."""
        refusal: Refusal | None = None
        if port not in self.ports:
            allowed = ", ".join(map(str, sorted(self.ports)))
            refusal = Refusal(403, f"port {port} is not allowed through this proxy (allowed: {allowed})",
                              "permission_error")
        elif not self.state.host_map.decrypts(host):  # decrypted hosts go to an instance, never dialled by name
            refusal = await self.guard.check(flow.client_conn, host, port)
        if refusal is None:
            return True
        flow.response = proxy_error(refusal.status, refusal.message, refusal.error_type)
        log.info("proxy: refused %s %s:%d: %s", flow.request.method, host, port, refusal.message)
        return False

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        auth = self.authenticate(flow)
        if auth is None:
            return
        host, port = normalise_host(flow.request.host), flow.request.port
        if not await self.admit_target(flow, host, port):
            return
        decrypted = self.state.host_map.decrypts(host) or self.state.host_map.is_native_bedrock(host)
        self.state.tunnels[flow.client_conn] = Tunnel(host, auth.secret, decrypted)
        allow_upstream(self.flows, flow)  # authenticated, port and address checked (guard.py: default deny)
        flow.metadata["aigw_user"] = auth.identity.user_name
        flow.metadata["aigw_tunnel"] = "decrypted" if decrypted else "tunnelled"
        metrics.PROXY_CONNECTS.labels(type="mitm" if decrypted else "tunneled").inc()

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.metadata.get(PROXIED) != ABSOLUTE_FORM:
            return
        if self.is_self_request(flow):
            # `http://<this gateway>/…` through the proxy (HTTP_PROXY and a base URL both set):
            # it is a gateway request, authenticated by the gateway route itself.
            del flow.metadata[PROXIED]
            flow.request.headers.pop(HOP_HEADER, None)
            return
        auth = self.authenticate(flow)
        if auth is None:
            return
        if await self.admit_target(flow, normalise_host(flow.request.host), flow.request.port):
            self.state.absolute_auth[flow] = auth

    def is_self_request(self, flow: http.HTTPFlow) -> bool:
        sockname = flow.client_conn.sockname
        if not sockname or flow.request.port != sockname[1]:
            return False
        local = {normalise_host(str(sockname[0])), "localhost", "127.0.0.1", "::1",
                 normalise_host(self.settings.listen_host)}
        return normalise_host(flow.request.host) in local


# -- TLS ---------------------------------------------------------------------------------


class TlsPolicy:
    """Addon: decrypt the AI hosts, tunnel every other CONNECT untouched."""

    name = "aigw_tls_policy"

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        tunnel = self.state.tunnels.get(data.context.client)
        if tunnel is not None and not tunnel.decrypted:
            # The client talks TLS with the origin itself and sees its real certificate.
            data.ignore_connection = True


# -- routing -------------------------------------------------------------------------------


class ProxyRouter:
    """Addon: requests inside tunnels and absolute-form requests -> instance + route, or relay."""

    name = "aigw_proxy_router"

    def __init__(self, settings: Settings, keys: KeyCache, state: ProxyState, flows: FlowStates) -> None:
        self.settings = settings
        self.keys = keys
        self.state = state
        self.flows = flows

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        proxied = flow.metadata.get(PROXIED)
        # Marked by the HTTP layer (addons/app/http_layer.py); the tunnel is the one ProxyAuth admitted.
        tunnel = self.state.tunnels.get(flow.client_conn) if proxied == TUNNELLED else None
        auth = None
        if tunnel is not None:
            host, secret = tunnel.host, tunnel.secret
        elif proxied == ABSOLUTE_FORM:
            auth = self.state.absolute_auth.get(flow)
            if auth is None:
                return  # refused by ProxyAuth (it set the response)
            host, secret = normalise_host(flow.request.host), auth.secret
        else:
            return  # a gateway route: Router's
        flow.request.headers.pop(HOP_HEADER, None)
        path, sep, query = flow.request.path.partition("?")
        match = self.state.host_map.match(host, path)
        bedrock = self.state.host_map.is_native_bedrock(host)
        if match is None and not bedrock:
            self.relay(flow)  # not an AI host: relayed untouched (address-guarded at dial time)
            return
        # A tunnel's key is checked again per request: revocation applies mid-tunnel. A plain-HTTP
        # proxy request was authenticated by ProxyAuth a moment ago.
        identity = auth.identity if auth is not None else self.keys.authenticate(secret, datetime.now(UTC))
        if identity is None:
            flow.response = json_response(401, error_body(
                "bedrock" if bedrock or match is None else match.instance.type, None,
                "the gateway key in the proxy password was revoked or has expired", "authentication_error"))
            return
        flow.metadata["aigw_user"] = identity.user_name
        if bedrock:
            self.route_bedrock(flow, host, path, sep + query, match, identity)
            return
        assert match is not None
        instance = match.instance
        if match.api_path is None:
            # Outside the API prefix (e.g. chatgpt.com/backend-api/wham/…): relayed to the instance's origin.
            base = urlsplit(instance.base_url)
            self.relay(flow, f"{base.scheme}://{base.netloc}{flow.request.path}", secret)
            return
        provider = PROVIDERS[instance.type]
        route = classify_route(provider, flow.request.method, match.api_path, flow.request.headers)
        if route is None:
            # A non-API path on an AI host (e.g. Claude Code's /api/claude_code/*): relayed, not recorded.
            self.relay(flow, instance.base_url + match.api_path + sep + query, secret)
            return
        credential = self.credential(instance, route.api, flow.request.headers, secret)
        admit(self.flows, flow, self.settings, instance, provider, route, match.api_path, sep + query, identity,
              credential, mode="proxy")

    def route_bedrock(self, flow: http.HTTPFlow, host: str, path: str, query: str, match: Match | None,
                      identity: Identity) -> None:
        """Bedrock-native clients (boto3, AnthropicBedrock, Claude Code on Bedrock): recorded, and re-signed
        by the instance claiming the host (centralized), else sent with their own signature (BYOK)."""
        route = BEDROCK.route(flow.request.method, path)
        assert route is not None  # every path has a route (passthrough when not recorded)
        if match is not None:
            instance, credential = match.instance, Credential(byok=False, explicit=False)
        else:
            instance = native_instance(host)
            credential = Credential(byok=True, explicit=True,
                                    client_credential=client_aws_credential(flow.request.headers))
        admit(self.flows, flow, self.settings, instance, BEDROCK, route, path, query, identity, credential,
              mode="proxy")

    def credential(self, instance: Instance, api: Api | None, headers: http.Headers, secret: str) -> Credential:
        """The request's own credential decides: none or the gateway key -> the instance key; else BYOK."""
        presented = presented_credential(headers)
        is_gateway_key = self.keys.is_gateway_credential(presented, secret)
        if PROVIDERS[instance.type].client_credential_only:
            # Copilot has no organisation key: the user's GitHub token always goes upstream.
            return Credential(byok=True, explicit=False, client_credential=None if is_gateway_key else presented)
        if presented is None or is_gateway_key:
            return Credential(byok=False, explicit=False)
        return Credential(byok=True, explicit=True, client_credential=presented)

    def relay(self, flow: http.HTTPFlow, url: str | None = None, secret: str | None = None) -> None:
        """Forward as it came (optionally to `url`, an AI host's origin), streamed both ways, never recorded."""
        if url is not None:
            flow.request.url = without_query_credentials(url)
        headers = flow.request.headers
        headers.pop(BYOK_HEADER, None)
        for name in ("authorization", "x-api-key"):
            # A gateway key never leaves the gateway, whatever the path and whatever credential is next to it.
            if name in headers and self.keys.is_gateway_credential(headers[name].strip().rpartition(" ")[2], secret):
                del headers[name]
        flow.request.stream = True
        self.state.relays.add(flow)
        allow_upstream(self.flows, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow in self.state.relays and flow.response is not None:
            flow.response.stream = True


def proxy_addons(settings: Settings, keys: KeyCache, flows: FlowStates) -> list[object]:
    """The proxy's addons, in chain order; they go before the gateway Router."""
    state = ProxyState.from_settings(settings)
    guard = AddressGuard(settings, state)
    return [ProxyAuth(settings, keys, state, guard, flows), guard, TlsPolicy(state),
            ProxyRouter(settings, keys, state, flows)]


__all__ = ["ProxyAuth", "ProxyRouter", "TlsPolicy", "proxy_addons"]
