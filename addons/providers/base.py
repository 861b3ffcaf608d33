"""What every provider type shares: the `Provider` value and its route tables.

A provider is a value, declared in its own module (anthropic.py, openai.py,
copilot.py, bedrock.py): its routes, the header its key travels in, the wire
parser of each API it serves and the request rewrites those APIs need. It
never touches the store or the network; upstream strategies (addons/upstreams/)
act on what it declares.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from addons.wire.model import RequestInfo


class Api(StrEnum):
    """The wire format an intercepted route speaks (selects the parser)."""

    MESSAGES = "messages"
    CHAT = "chat"
    RESPONSES = "responses"
    BEDROCK = "bedrock"  # Bedrock-native runtime calls (InvokeModel*, Converse*) through the proxy


@dataclass(frozen=True, slots=True)
class Route:
    api: Api | None  # None: passthrough (authenticated and relayed, not recorded)
    name: str  # the route as recorded/labelled, e.g. "/v1/messages"

    @property
    def intercepted(self) -> bool:
        return self.api is not None


@dataclass(frozen=True, slots=True)
class RouteRule:
    pattern: re.Pattern[str]
    route: Route
    methods: frozenset[str] | None = None  # None: any method


def rule(pattern: str, api: Api | None, name: str, methods: tuple[str, ...] | None = None) -> RouteRule:
    return RouteRule(re.compile(pattern), Route(api, name), frozenset(methods) if methods else None)


class KeyHeader(StrEnum):
    """Where a provider key travels."""

    X_API_KEY = "x-api-key"
    BEARER = "authorization"  # `Authorization: Bearer <key>`

    def put(self, headers: MutableMapping[str, str], key: str) -> None:
        """Carry `key` in this header, and drop the other one (a client's credential, never forwarded)."""
        other = KeyHeader.BEARER if self is KeyHeader.X_API_KEY else KeyHeader.X_API_KEY
        headers.pop(other.value, None)
        headers[self.value] = key if self is KeyHeader.X_API_KEY else f"Bearer {key}"


# Rewrites an intercepted request body (as read: `RequestInfo`) in place, returning whether it did: the
# response then carries something the client did not ask for, which the stream tap hides
# (`Interception.hide_usage`).
type Rewrite = Callable[[dict[str, Any], RequestInfo], bool]


@dataclass(frozen=True, slots=True)
class ApiSpec:
    """How one API is spoken: its wire parser (`parse_request`, `parse_response`, `StreamParser`),
    the header its key travels in, and the rewrite its requests need before they go upstream."""

    parser: ModuleType
    key_header: KeyHeader
    rewrite: Rewrite | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    type: str
    # Gateway-route clients put this in front of the API path (OpenAI SDKs'
    # base URL ends in /v1 while the instance base URL already has it).
    gateway_prefix: str
    rules: tuple[RouteRule, ...]
    # The APIs its intercepted routes speak. The API, not the provider, decides the parser, the key
    # header and the error shape: Copilot's /v1/messages speaks Anthropic.
    apis: Mapping[Api, ApiSpec] = field(default_factory=dict)
    key_header: KeyHeader = KeyHeader.BEARER  # on its pass-through routes
    passthrough_everything: bool = False
    # The client's own credential always goes upstream (Copilot: no organisation key exists).
    client_credential_only: bool = False
    websocket_responses: bool = False  # serves the Responses API over a WebSocket (Codex)

    def route(self, method: str, api_path: str) -> Route | None:
        """Classify a request by its path relative to the instance base URL."""
        for r in self.rules:
            if (r.methods is None or method in r.methods) and r.pattern.fullmatch(api_path):
                return r.route
        if self.passthrough_everything:
            return Route(None, "passthrough")
        return None

    def api_path(self, gateway_rest: str) -> str | None:
        """Map the path after `/api/v2/aibridge/<name>` to the API path, or None."""
        if not self.gateway_prefix:
            return gateway_rest or "/"
        if gateway_rest == self.gateway_prefix or gateway_rest.startswith(self.gateway_prefix + "/"):
            return gateway_rest[len(self.gateway_prefix) :] or "/"
        return None

    def spec(self, api: Api) -> ApiSpec:
        return self.apis[api]

    def put_key(self, headers: MutableMapping[str, str], api: Api | None, key: str) -> None:
        """Carry the provider key the way the route's API (or, on pass-through routes, the provider) expects."""
        spec = self.apis.get(api) if api is not None else None
        (spec.key_header if spec is not None else self.key_header).put(headers, key)
