"""Anthropic Messages API: request bodies, blocking responses and SSE streams.

Pure functions and one incremental parser; nothing here raises on bad input
from the network: what cannot be parsed is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from addons.wire.model import (
    RequestInfo,
    ResponseSummary,
    Thought,
    TokenUsage,
    ToolCall,
    as_int,
    compact_json_text,
    loads_object,
    str_or_none,
    typed_text,
)
from addons.wire.sse import SSEEvent

# Text blocks a client adds to a user turn on its own (Claude Code's reminders).
INJECTED_TEXT_PREFIXES: tuple[str, ...] = ("<system-reminder>",)

_TOOL_BLOCK_TYPES = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
# Blocks are assembled in summary(), so a block's stop event carries nothing to read.
_UNINTERESTING_EVENTS = frozenset({"ping", "content_block_stop"})


# --- requests ---------------------------------------------------------------------------------


def parse_request(body: dict[str, Any]) -> RequestInfo:
    if not isinstance(body, dict):
        return RequestInfo()
    model = body.get("model")
    info = RequestInfo(model=model if isinstance(model, str) else None, stream=bool(body.get("stream")))
    last = _last_turn(body.get("messages"))
    if last is None or last.get("role") != "user":
        return info
    content = last.get("content")
    if isinstance(content, str):
        info.prompt = typed_text(content)
    elif isinstance(content, list):
        info.prompt = _last_typed_text(content)
        info.correlating_tool_call_id = _last_tool_result_id(content)
    return info


def _last_turn(messages: Any) -> dict[str, Any] | None:
    """The last message, skipping trailing `system` messages (Claude Code can append them)."""
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if not isinstance(message, dict):
            return None
        if message.get("role") != "system":
            return message
    return None


def _last_typed_text(blocks: list[Any]) -> str | None:
    for block in reversed(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            continue
        text = block.get("text")
        if isinstance(text, str) and not is_injected_text(text) and (typed := typed_text(text)):
            return typed
    return None


def is_injected_text(text: str) -> bool:
    return text.lstrip().startswith(INJECTED_TEXT_PREFIXES)


def _last_tool_result_id(blocks: list[Any]) -> str | None:
    for block in reversed(blocks):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if isinstance(tool_use_id, str) and tool_use_id:
                return tool_use_id
    return None


# --- responses --------------------------------------------------------------------------------


def parse_response(body: dict[str, Any]) -> ResponseSummary:
    """A blocking Messages response (or an error body)."""
    summary = ResponseSummary(complete=True)
    if not isinstance(body, dict):
        return summary
    summary.error = _error_text(body.get("error")) if body.get("type") == "error" else None
    response_id = str_or_none(body.get("id"))
    summary.response_id = response_id
    summary.model = str_or_none(body.get("model"))
    if stop_reason := str_or_none(body.get("stop_reason")):
        summary.finish_reasons.append(stop_reason)
    usage = body.get("usage")
    if isinstance(usage, dict):
        summary.usage = usage_from_fields(usage, response_id)
    content = body.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        block_type = block.get("type")
        if block_type == "thinking":
            thinking = block.get("thinking")
            if isinstance(thinking, str) and thinking:
                summary.thoughts.append(Thought(thinking, "thinking", response_id))
        elif block_type in _TOOL_BLOCK_TYPES:
            tool_input = block.get("input")
            summary.tool_calls.append(
                ToolCall(
                    provider_response_id=response_id,
                    call_id=str_or_none(block.get("id")) or "",
                    name=str_or_none(block.get("name")) or "",
                    input=_dump_json(tool_input) if tool_input is not None else "{}",
                )
            )
    return summary


def usage_from_fields(usage: dict[str, Any], response_id: str | None) -> TokenUsage:
    """Maps an Anthropic `usage` object (cache counts are already outside input_tokens)."""
    metadata: dict[str, Any] = {}
    cache_creation = usage.get("cache_creation")
    if isinstance(cache_creation, dict):
        _copy_int(cache_creation, "ephemeral_5m_input_tokens", metadata, "cache_ephemeral_5m_input")
        _copy_int(cache_creation, "ephemeral_1h_input_tokens", metadata, "cache_ephemeral_1h_input")
    server_tool_use = usage.get("server_tool_use")
    if isinstance(server_tool_use, dict):
        _copy_int(server_tool_use, "web_search_requests", metadata, "web_search_requests")
        _copy_int(server_tool_use, "web_fetch_requests", metadata, "web_fetch_requests")
    if isinstance(usage.get("service_tier"), str):
        metadata["service_tier"] = usage["service_tier"]
    output_details = usage.get("output_tokens_details")
    if isinstance(output_details, dict):
        _copy_int(output_details, "thinking_tokens", metadata, "thinking_tokens")
    return TokenUsage(
        provider_response_id=response_id,
        input_tokens=as_int(usage.get("input_tokens")),
        output_tokens=as_int(usage.get("output_tokens")),
        cache_read_input_tokens=as_int(usage.get("cache_read_input_tokens")),
        cache_write_input_tokens=as_int(usage.get("cache_creation_input_tokens")),
        metadata=metadata,
    )


@dataclass(slots=True)
class _Block:
    kind: str  # "thinking" or "tool"
    parts: list[str] = field(default_factory=list)  # thinking text or partial_json pieces
    call_id: str = ""
    name: str = ""
    start_input: Any = None  # tool input given whole in content_block_start


class StreamParser:
    """Folds Messages SSE events into a ResponseSummary as they pass."""

    def __init__(self) -> None:
        self._response_id: str | None = None
        self._model: str | None = None
        # Cumulative usage: message_start's object, overwritten field by field by
        # every non-null field of each message_delta (never summed).
        self._usage: dict[str, Any] | None = None
        self._blocks: dict[int, _Block] = {}
        self._error: str | None = None
        self._complete = False
        self._stop_reason: str | None = None

    def skips(self, name: str | None, data: bytes) -> bool:
        """True when `on_event` would ignore this block (see `sse.lone_block`): the hot path."""
        if name == "content_block_delta":
            return b"thinking_delta" not in data and b"input_json_delta" not in data
        return name in _UNINTERESTING_EVENTS

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if data is None:
            return
        name = event.event
        if name in _UNINTERESTING_EVENTS:
            return
        if name == "message_stop":
            self._complete = True
            return
        if name == "content_block_delta" and "thinking_delta" not in data and "input_json_delta" not in data:
            return  # text, citation and signature deltas carry nothing recorded
        message = loads_object(data)
        if message is None:
            return
        kind = message.get("type")
        if kind == "content_block_delta":
            self._on_block_delta(message)
        elif kind == "content_block_start":
            self._on_block_start(message)
        elif kind == "message_start":
            self._on_message_start(message)
        elif kind == "message_delta":
            self._merge_usage(message.get("usage"))
            delta = message.get("delta")
            if isinstance(delta, dict) and (stop_reason := str_or_none(delta.get("stop_reason"))):
                self._stop_reason = stop_reason
        elif kind == "message_stop":
            self._complete = True
        elif kind == "error":
            self._error = _error_text(message.get("error"))
            self._complete = True

    def summary(self) -> ResponseSummary:
        response_id = self._response_id
        summary = ResponseSummary(
            response_id=response_id,
            model=self._model,
            usage=usage_from_fields(self._usage, response_id) if self._usage is not None else None,
            error=self._error,
            complete=self._complete,
            finish_reasons=[self._stop_reason] if self._stop_reason else [],
        )
        for block in self._blocks.values():
            if block.kind == "thinking":
                text = "".join(block.parts)
                if text:
                    summary.thoughts.append(Thought(text, "thinking", response_id))
            else:
                summary.tool_calls.append(ToolCall(response_id, block.call_id, block.name, _tool_input_text(block)))
        return summary

    def _on_message_start(self, message: dict[str, Any]) -> None:
        body = message.get("message")
        if not isinstance(body, dict):
            return
        self._response_id = str_or_none(body.get("id")) or self._response_id
        self._model = str_or_none(body.get("model")) or self._model
        usage = body.get("usage")
        if isinstance(usage, dict):
            self._usage = dict(usage)

    def _merge_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        merged = self._usage if self._usage is not None else {}
        for key, value in usage.items():
            if value is not None:
                merged[key] = value
        self._usage = merged

    def _on_block_start(self, message: dict[str, Any]) -> None:
        index = message.get("index")
        block = message.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return
        block_type = block.get("type")
        if block_type == "thinking":
            thinking = block.get("thinking")
            self._blocks[index] = _Block("thinking", [thinking] if isinstance(thinking, str) else [])
        elif block_type in _TOOL_BLOCK_TYPES:
            self._blocks[index] = _Block(
                "tool",
                call_id=str_or_none(block.get("id")) or "",
                name=str_or_none(block.get("name")) or "",
                start_input=block.get("input"),
            )

    def _on_block_delta(self, message: dict[str, Any]) -> None:
        index = message.get("index")
        block = self._blocks.get(index) if isinstance(index, int) else None
        delta = message.get("delta")
        if block is None or not isinstance(delta, dict):
            return
        delta_type = delta.get("type")
        if delta_type == "thinking_delta" and block.kind == "thinking":
            piece = delta.get("thinking")
        elif delta_type == "input_json_delta" and block.kind == "tool":
            piece = delta.get("partial_json")
        else:
            return
        if isinstance(piece, str) and piece:
            block.parts.append(piece)


def _tool_input_text(block: _Block) -> str:
    if block.parts:
        return compact_json_text("".join(block.parts))
    if block.start_input:
        return _dump_json(block.start_input)
    return "{}"


# --- small helpers ------------------------------------------------------------------------------


def _dump_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (ValueError, TypeError):
        return "{}"


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return "error: unknown error"
    kind = error.get("type") or "error"
    message = error.get("message")
    return f"{kind}: {message}" if message else str(kind)


def _copy_int(source: dict[str, Any], key: str, target: dict[str, Any], as_key: str) -> None:
    value = source.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        target[as_key] = value
