"""What the wire parsers produce: plain values, no I/O.

A parser turns a request body into a `RequestInfo` and a response (a blocking
JSON body or a stream of events) into a `ResponseSummary`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

# Context a client puts in front of what the person typed, in the same text (Copilot CLI's clock).
_LEADING_CONTEXT = re.compile(r"\A\s*<current_datetime>[^<]*</current_datetime>\s*")


def typed_text(text: str) -> str | None:
    """`text` without the context a client prepends to it; None when nothing typed is left."""
    typed = _LEADING_CONTEXT.sub("", text, count=1)
    return typed if typed.strip() else None


@dataclass(slots=True)
class RequestInfo:
    model: str | None = None
    stream: bool = False
    # The last user-typed text (never tool results or injected context).
    prompt: str | None = None
    # The id of the last tool result the request carries (links threads).
    correlating_tool_call_id: str | None = None


@dataclass(slots=True)
class TokenUsage:
    provider_response_id: str | None = None
    input_tokens: int = 0  # excluding cached tokens
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ToolCall:
    provider_response_id: str | None
    call_id: str  # provider_tool_call_id: what the next request's tool result refers to
    name: str
    input: str  # JSON text, assembled from deltas
    item_id: str | None = None  # Responses item id (fc_...), when distinct from call_id
    server_url: str | None = None  # NULL for client-defined tools
    injected: bool = False


@dataclass(slots=True)
class Thought:
    content: str
    source: str  # thinking | reasoning_summary | commentary
    provider_response_id: str | None = None


@dataclass(slots=True)
class ResponseSummary:
    response_id: str | None = None
    model: str | None = None
    usage: TokenUsage | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    thoughts: list[Thought] = field(default_factory=list)
    # Set when the upstream reported a failure inside a 200 response
    # (SSE `error` event, `response.failed`, chat `data: {"error":...}`).
    error: str | None = None
    # True once the stream's terminal event was seen (message_stop,
    # [DONE], response.completed/failed/incomplete); always True for bodies.
    complete: bool = False
    # Why the model stopped, as the provider says it (end_turn, tool_use, stop, length, …), per choice.
    finish_reasons: list[str] = field(default_factory=list)


# --- JSON helpers shared by the parsers ----------------------------------------------------------


def compact_json_text(text: str) -> str:
    """Compact JSON for text that parses; `{}` for empty text; the text itself otherwise."""
    if not text.strip():
        return "{}"
    try:
        return orjson.dumps(orjson.loads(text)).decode()
    except (ValueError, TypeError):
        return text


def loads_object(data: str | bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
