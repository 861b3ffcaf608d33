"""OpenAI's API: Chat Completions and Responses (recorded), and the pass-through routes its clients use."""

from __future__ import annotations

from typing import Any

from addons.providers.base import Api, ApiSpec, KeyHeader, Provider, rule
from addons.wire import chat, responses
from addons.wire.model import RequestInfo


def include_usage(body: dict[str, Any], info: RequestInfo) -> bool:
    """A streaming Chat request reports its token usage only when asked (`stream_options.include_usage`):
    ask for it. True when the client had not, so the stream tap hides the extra usage chunk from it."""
    if not info.stream or chat.client_wants_usage(body):
        return False
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    body["stream_options"] = {**options, "include_usage": True}
    return True


CHAT = ApiSpec(parser=chat, key_header=KeyHeader.BEARER, rewrite=include_usage)
RESPONSES = ApiSpec(parser=responses, key_header=KeyHeader.BEARER)

OPENAI = Provider(
    type="openai",
    gateway_prefix="/v1",
    rules=(
        rule(r"/chat/completions", Api.CHAT, "/chat/completions", ("POST",)),
        rule(r"/responses", Api.RESPONSES, "/responses", ("POST",)),
        rule(r"/models(/.*)?", None, "/models", ("GET",)),  # not DELETE: it deletes a fine-tuned model
        # Retrieve, input items, cancel, compact, input token counts; no DELETE of stored responses.
        rule(r"/responses/.+", None, "/responses/*", ("GET", "POST")),
        rule(r"/conversations(/.*)?", None, "/conversations", ("GET", "POST")),
    ),
    apis={Api.CHAT: CHAT, Api.RESPONSES: RESPONSES},
    websocket_responses=True,
)
