"""What every provider type shares: route tables and error bodies.

A provider is a value: it names its routes, says how its credential is
carried, and shapes its errors. It never touches the store or the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import orjson


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


@dataclass(frozen=True, slots=True)
class Provider:
    type: str
    # Gateway-route clients put this in front of the API path (OpenAI SDKs'
    # base URL ends in /v1 while the instance base URL already has it).
    gateway_prefix: str
    rules: tuple[RouteRule, ...]
    passthrough_everything: bool = False

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


def anthropic_error(message: str, error_type: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def openai_error(message: str, error_type: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})


def aws_error(message: str, aws_type: str) -> bytes:
    """AWS's JSON error shape (Bedrock-native clients); botocore reads the exception name from `__type`."""
    return orjson.dumps({"__type": aws_type, "message": message})


def any_error(message: str, error_type: str, code: str | None = None) -> bytes:
    """An error both SDK families parse, for when no provider is known yet."""
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message, "code": code}})
