"""Per-flow state: what the gateway decided about one request, typed, and where it is kept.

A leaf module: it imports nothing of aigw's at runtime (the field types are for the type checker only),
so every layer — chain addons, upstream strategies, sinks — can depend on it without a cycle.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.chain.auth import Identity
    from addons.providers.base import Api, Provider, Route
    from addons.settings.instances import Instance
    from addons.wire.model import RequestInfo, ResponseSummary


@dataclass(slots=True)
class Interception:
    """One recorded exchange on an intercepted route, from its acceptance to its end."""

    id: str
    api: Api
    started_at: datetime
    info: RequestInfo
    parser: Any = None  # the wire module's StreamParser, once streaming
    hide_usage: bool = False
    summary: ResponseSummary | None = None
    ended: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    # Merged into the token usage row's metadata (e.g. Bedrock's token-count headers).
    token_metadata: dict[str, Any] = field(default_factory=dict)
    first_chunk_at: datetime | None = None  # stamped by the stream tap


@dataclass(slots=True)
class FlowContext:
    """A request admitted to an instance route (addons.chain.routing.admit), and what happened to it since."""

    instance: Instance
    provider: Provider
    route: Route
    api_path: str  # path relative to the instance base URL, without the query
    query: str  # "" or "?…"
    identity: Identity
    byok: bool
    received_at: datetime
    client_credential: str | None = None  # the BYOK credential (never stored; only its hint)
    mode: Literal["gateway", "proxy"] = "gateway"  # reached by base URL, or through HTTPS_PROXY
    interception: Interception | None = None
    # The instance key injected (addons.upstreams.direct.DirectUpstream): the key pool cools it on 401/429;
    # dropped when governance refuses the request, which then never goes upstream.
    provider_key: str | None = None
    # Why the gateway ended the upstream exchange itself (e.g. "upstream timeout after 300s"): the
    # interception's error, and the circuit breaker counts it as an upstream failure.
    upstream_error: str | None = None
    bedrock_operation: str | None = None  # the Bedrock operation the request was sent to; None: answered locally
    metrics_counted: bool = False  # a passthrough request counted once, though response and error can both fire


type Target = tuple[str, str, int]  # scheme, host, port


class FlowStates:
    """What aigw decided about each flow, for as long as the flow lives: its FlowContext (admitted to an
    instance route) and the upstream target aigw chose for it (addons.chain.guard.allow_upstream).

    One per gateway process, shared by the addons that read or write per-flow state. Kept off the flow
    itself: mitmweb copies and saves `flow.metadata` (a replayed copy must not inherit a decision), and a
    FlowContext holds credentials.
    """

    __slots__ = ("_contexts", "_upstreams")

    def __init__(self) -> None:
        self._contexts: weakref.WeakKeyDictionary[http.HTTPFlow, FlowContext] = weakref.WeakKeyDictionary()
        self._upstreams: weakref.WeakKeyDictionary[http.HTTPFlow, Target] = weakref.WeakKeyDictionary()

    def get(self, flow: http.HTTPFlow) -> FlowContext | None:
        return self._contexts.get(flow)

    def attach(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        self._contexts[flow] = ctx

    def choose_upstream(self, flow: http.HTTPFlow, target: Target) -> None:
        self._upstreams[flow] = target

    def chosen_upstream(self, flow: http.HTTPFlow) -> Target | None:
        return self._upstreams.get(flow)


# flow.metadata key: how a request that is not for the gateway's own routes reached the listener, marked
# by addons.app.http_layer as mitmproxy parses it (a string: mitmweb copies and saves metadata).
PROXIED = "aigw_proxied"
TUNNELLED = "tunnel"  # inside a CONNECT tunnel
# A plain-HTTP proxy request (`GET http://host/p`): mitmproxy rewrites it to origin form before any hook
# runs, after which only this mark tells it from a gateway request.
ABSOLUTE_FORM = "absolute-form"
