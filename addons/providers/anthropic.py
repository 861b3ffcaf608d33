"""Anthropic's API: the Messages route (recorded) and the pass-through routes its clients use."""

from __future__ import annotations

from addons.providers.base import Api, ApiSpec, KeyHeader, Provider, rule
from addons.wire import anthropic

MESSAGES = ApiSpec(parser=anthropic, key_header=KeyHeader.X_API_KEY)

ANTHROPIC = Provider(
    type="anthropic",
    gateway_prefix="",
    rules=(
        rule(r"/v1/messages", Api.MESSAGES, "/v1/messages", ("POST",)),
        # Pass-through routes carry the organisation's key: each allows only the methods clients use
        # (README "Security"); any other method is 404 `route not supported`, never forwarded.
        rule(r"/v1/messages/count_tokens", None, "/v1/messages/count_tokens", ("POST",)),
        rule(r"/v1/models(/.*)?", None, "/v1/models", ("GET",)),
        rule(r"/api/event_logging/.*", None, "/api/event_logging", ("POST",)),
    ),
    apis={Api.MESSAGES: MESSAGES},
    key_header=KeyHeader.X_API_KEY,
)
