"""OpenAI Chat Completions: request bodies, blocking responses and SSE chunk streams.

Pure functions and one incremental parser; nothing here raises on bad input
from the network: what cannot be parsed is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from addons.wire.model import (
    RequestInfo,
    ResponseSummary,
    TokenUsage,
    ToolCall,
    as_int,
    compact_json_text,
    loads_object,
    str_or_none,
    typed_text,
)
from addons.wire.sse import SSEEvent

# Text parts a client adds to a user turn on its own.
INJECTED_TEXT_PREFIXES: tuple[str, ...] = ("<system-reminder>",)

_INSTRUCTION_ROLES = frozenset({"system", "developer"})


# --- requests ---------------------------------------------------------------------------------


def parse_request(body: dict[str, Any]) -> RequestInfo:
    if not isinstance(body, dict):
        return RequestInfo()
    model = body.get("model")
    info = RequestInfo(model=model if isinstance(model, str) else None, stream=bool(body.get("stream")))
    messages = body.get("messages")
    if not isinstance(messages, list):
        return info
    trailing = _trailing_turns(messages)
    if not trailing:
        return info
    last = trailing[-1]
    role = last.get("role")
    if role == "user":
        info.prompt = _typed_text(last.get("content"))
    elif role == "tool":
        call_id = last.get("tool_call_id")
        info.correlating_tool_call_id = call_id if isinstance(call_id, str) and call_id else None
    return info


def _trailing_turns(messages: list[Any]) -> list[dict[str, Any]]:
    """Messages up to and including the last one that is not a system/developer instruction."""
    end = len(messages)
    while end and isinstance(messages[end - 1], dict) and messages[end - 1].get("role") in _INSTRUCTION_ROLES:
        end -= 1
    if not end or not isinstance(messages[end - 1], dict):
        return []
    return messages[:end]


def _typed_text(content: Any) -> str | None:
    if isinstance(content, str):
        return typed_text(content)
    if not isinstance(content, list):
        return None
    for part in reversed(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            continue
        text = part.get("text")
        if isinstance(text, str) and not text.lstrip().startswith(INJECTED_TEXT_PREFIXES):
            typed = typed_text(text)
            if typed:
                return typed
    return None


def client_wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") if isinstance(body, dict) else None
    return isinstance(options, dict) and bool(options.get("include_usage"))


# --- responses --------------------------------------------------------------------------------


def parse_response(body: dict[str, Any]) -> ResponseSummary:
    """A blocking chat.completion body (or an error body)."""
    summary = ResponseSummary(complete=True)
    if not isinstance(body, dict):
        return summary
    if body.get("error"):
        summary.error = error_text(body["error"])
    response_id = str_or_none(body.get("id"))
    summary.response_id = response_id
    summary.model = str_or_none(body.get("model"))
    usage = body.get("usage")
    if isinstance(usage, dict):
        summary.usage = usage_from_fields(usage, response_id)
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and (reason := str_or_none(choice.get("finish_reason"))):
            summary.finish_reasons.append(reason)
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        tool_calls = message.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            tool_call = _tool_call_from_message(call, response_id)
            if tool_call is not None:
                summary.tool_calls.append(tool_call)
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            tool_call = _tool_call_from_message({"type": "function", "function": legacy}, response_id)
            if tool_call is not None:
                summary.tool_calls.append(tool_call)
    return summary


def _tool_call_from_message(call: Any, response_id: str | None) -> ToolCall | None:
    if not isinstance(call, dict):
        return None
    call_id = str_or_none(call.get("id")) or ""
    if call.get("type") == "custom":
        custom = call.get("custom")
        if not isinstance(custom, dict):
            return None
        text = custom.get("input")
        return ToolCall(
            response_id, call_id, str_or_none(custom.get("name")) or "", text if isinstance(text, str) else ""
        )
    function = call.get("function")
    if not isinstance(function, dict):
        return None
    arguments = function.get("arguments")
    return ToolCall(
        response_id,
        call_id,
        str_or_none(function.get("name")) or "",
        compact_json_text(arguments if isinstance(arguments, str) else ""),
    )


def usage_from_fields(usage: dict[str, Any], response_id: str | None) -> TokenUsage:
    """Maps a Chat Completions `usage` object.

    OpenAI counts cached tokens, and cache-write tokens where a provider
    reports them, inside prompt_tokens; both are subtracted so input_tokens
    holds only uncached, unwritten input.
    """
    prompt_details = usage.get("prompt_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    completion_details = usage.get("completion_tokens_details")
    completion_details = completion_details if isinstance(completion_details, dict) else {}
    prompt_tokens = as_int(usage.get("prompt_tokens"))
    cached = as_int(prompt_details.get("cached_tokens"))
    cache_write = as_int(prompt_details.get("cache_write_tokens"))
    metadata: dict[str, Any] = {}
    for source, key, as_key in (
        (completion_details, "reasoning_tokens", "reasoning_tokens"),
        (prompt_details, "audio_tokens", "input_audio_tokens"),
        (completion_details, "audio_tokens", "output_audio_tokens"),
        (completion_details, "accepted_prediction_tokens", "accepted_prediction_tokens"),
        (completion_details, "rejected_prediction_tokens", "rejected_prediction_tokens"),
        (usage, "total_tokens", "total_tokens"),
        (usage, "prompt_tokens", "prompt_tokens"),
    ):
        value = as_int(source.get(key))
        if value:
            metadata[as_key] = value
    return TokenUsage(
        provider_response_id=response_id,
        input_tokens=max(prompt_tokens - cached - cache_write, 0),
        output_tokens=as_int(usage.get("completion_tokens")),
        cache_read_input_tokens=cached,
        cache_write_input_tokens=cache_write,
        metadata=metadata,
    )


# --- streams ----------------------------------------------------------------------------------


def is_usage_only_chunk(event: SSEEvent) -> bool:
    """The extra final chunk (`"choices": []` + usage) that include_usage adds."""
    data = event.data
    if data is None or _null_or_absent(data, '"usage"') or '"choices"' not in data:
        return False
    chunk = loads_object(data)
    if chunk is None:
        return False
    choices = chunk.get("choices")
    return isinstance(choices, list) and not choices and isinstance(chunk.get("usage"), dict)


@dataclass(slots=True)
class _CallBuffer:
    call_id: str
    kind: str  # "function" or "custom"
    name: str = ""
    parts: list[str] = field(default_factory=list)


class StreamParser:
    """Folds chat.completion.chunk events into a ResponseSummary as they pass."""

    def __init__(self) -> None:
        self._response_id: str | None = None
        self._model: str | None = None
        self._usage: dict[str, Any] | None = None
        self._calls: list[_CallBuffer] = []
        self._open_calls: dict[tuple[int, int], _CallBuffer] = {}  # by (choice index, tool index)
        self._error: str | None = None
        self._complete = False
        self._finish_reasons: list[str] = []

    def skips(self, name: str | None, data: bytes) -> bool:
        """True when `on_event` would ignore this block (see `sse.lone_block`): the hot path."""
        return (self._response_id is not None and data[:1] == b"{"
                and _is_plain_output(data.decode("utf-8", "replace")))

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if data is None:
            return
        if data[:1] != "{" and data.strip() == "[DONE]":
            self._complete = True
            return
        if self._response_id is not None and _is_plain_output(data):
            return
        chunk = loads_object(data)
        if chunk is None:
            return
        if self._response_id is None:
            self._response_id = str_or_none(chunk.get("id"))
        if self._model is None:
            self._model = str_or_none(chunk.get("model"))
        if chunk.get("error"):
            self._error = error_text(chunk["error"])
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                self._on_choice(choice)

    def summary(self) -> ResponseSummary:
        response_id = self._response_id
        return ResponseSummary(
            response_id=response_id,
            model=self._model,
            usage=usage_from_fields(self._usage, response_id) if self._usage is not None else None,
            tool_calls=[_finish_call(call, response_id) for call in self._calls if call.call_id or call.name],
            error=self._error,
            complete=self._complete,
            finish_reasons=list(self._finish_reasons),
        )

    def _on_choice(self, choice: dict[str, Any]) -> None:
        if reason := str_or_none(choice.get("finish_reason")):
            self._finish_reasons.append(reason)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        choice_index = choice.get("index")
        choice_index = choice_index if isinstance(choice_index, int) else 0
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for position, fragment in enumerate(tool_calls):
                if isinstance(fragment, dict):
                    self._on_tool_fragment(choice_index, position, fragment)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            self._on_tool_fragment(choice_index, -1, {"type": "function", "function": legacy})

    def _on_tool_fragment(self, choice_index: int, position: int, fragment: dict[str, Any]) -> None:
        tool_index = fragment.get("index")
        key = (choice_index, tool_index if isinstance(tool_index, int) else position)
        call_id = str_or_none(fragment.get("id"))
        buffer = self._open_calls.get(key)
        if buffer is None or (call_id is not None and buffer.call_id and call_id != buffer.call_id):
            kind = "custom" if fragment.get("type") == "custom" or "custom" in fragment else "function"
            buffer = _CallBuffer(call_id or "", kind)
            self._open_calls[key] = buffer
            self._calls.append(buffer)
        elif call_id is not None and not buffer.call_id:
            buffer.call_id = call_id
        body = fragment.get("custom" if buffer.kind == "custom" else "function")
        if not isinstance(body, dict):
            return
        name = body.get("name")
        if isinstance(name, str) and name and not buffer.name:
            buffer.name = name
        piece = body.get("input" if buffer.kind == "custom" else "arguments")
        if isinstance(piece, str) and piece:
            buffer.parts.append(piece)


def _finish_call(call: _CallBuffer, response_id: str | None) -> ToolCall:
    text = "".join(call.parts)
    return ToolCall(response_id, call.call_id, call.name, text if call.kind == "custom" else compact_json_text(text))


def _is_plain_output(data: str) -> bool:
    """True for a chunk that carries only generated text (no tools, usage, error or finish)."""
    if '"tool_calls"' in data or '"error"' in data or '"function_call"' in data:
        return False
    return _null_or_absent(data, '"usage"') and _null_or_absent(data, '"finish_reason"')


def _null_or_absent(data: str, key: str) -> bool:
    count = data.count(key)
    return not count or count == data.count(key + ":null") + data.count(key + ": null")


# --- helpers shared with the Responses parser ---------------------------------------------------


def error_text(error: Any) -> str:
    """`<code or type>: <message>` for an OpenAI error object."""
    if isinstance(error, str):
        return error
    if not isinstance(error, dict):
        return "error"
    kind = error.get("code") or error.get("type") or "error"
    message = error.get("message")
    return f"{kind}: {message}" if message else str(kind)
