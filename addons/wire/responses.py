"""OpenAI Responses API: request bodies, blocking responses and SSE streams.

Items are correlated by `output_index` only: GitHub Copilot gives every event
of one item a different `item_id`. Pure functions and one incremental parser;
nothing here raises on bad input from the network.
"""

from __future__ import annotations

from typing import Any

from addons.wire.chat import error_text
from addons.wire.model import (
    RequestInfo,
    ResponseSummary,
    TokenUsage,
    as_int,
    loads_object,
    str_or_none,
    typed_text,
)
from addons.wire.responses_items import OutputItem
from addons.wire.sse import SSEEvent

# User-role input texts that clients inject as context rather than the person
# typing them: Codex's AGENTS.md / environment / session-prefix fragments, and
# Claude-style reminders. Matched case-insensitively at the start of the text.
INJECTED_TEXT_PREFIXES: tuple[str, ...] = (
    "# agents.md instructions for",
    "<instructions>",
    "<user_instructions>",
    "<environment_context>",
    "<permissions instructions>",
    "<collaboration_mode>",
    "<personality_spec>",
    "<realtime_conversation>",
    "<skill>",
    "<user_shell_command>",
    "<turn_aborted>",
    "<subagent_notification>",
    "<tool_context>",
    "<reasoning_context>",
    "<pinned_notes>",
    "<agent_message_board_notification>",
    "<recommended_plugins>",
    "<system-reminder>",
)

_INSTRUCTION_ROLES = frozenset({"system", "developer"})
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_START_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
# Only worth parsing while a commentary message is streaming.
_TEXT_EVENTS = frozenset({"response.output_text.delta", "response.output_text.done"})
_HANDLED_EVENTS = (
    _TERMINAL_EVENTS
    | _START_EVENTS
    | _TEXT_EVENTS
    | {
        "error",
        "response.output_item.added",
        "response.output_item.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
    }
)


# --- requests ---------------------------------------------------------------------------------


def parse_request(body: dict[str, Any]) -> RequestInfo:
    if not isinstance(body, dict):
        return RequestInfo()
    model = body.get("model")
    info = RequestInfo(model=model if isinstance(model, str) else None, stream=bool(body.get("stream")))
    items = body.get("input")
    if isinstance(items, str):
        info.prompt = typed_text(items)
    elif isinstance(items, list):
        info.prompt = _last_prompt(items)
        info.correlating_tool_call_id = _trailing_tool_output_id(items)
    return info


def is_injected_text(text: str) -> bool:
    return text.lstrip()[:64].lower().startswith(INJECTED_TEXT_PREFIXES)


def _last_prompt(items: list[Any]) -> str | None:
    """Only the last input item counts (Coder's rule), stepping back over injected context."""
    for item in reversed(items):
        if not isinstance(item, dict):
            return None
        if _is_message(item) and item.get("role") in _INSTRUCTION_ROLES:
            continue
        if not _is_message(item) or item.get("role") != "user":
            return None
        texts = _input_texts(item.get("content"))
        typed = [t for t in (typed_text(text) for text in texts if not is_injected_text(text)) if t]
        if typed:
            return typed[-1]
        if not texts:
            return None
    return None


def _trailing_tool_output_id(items: list[Any]) -> str | None:
    for item in reversed(items):
        if not isinstance(item, dict):
            return None
        item_type = item.get("type")
        if isinstance(item_type, str) and item_type.endswith("_call_output"):
            return str_or_none(item.get("call_id"))
        if _is_message(item) and (item.get("role") in _INSTRUCTION_ROLES or _is_injected_user_message(item)):
            continue
        return None
    return None


def _is_message(item: dict[str, Any]) -> bool:
    return item.get("type", "message") == "message" and "role" in item


def _is_injected_user_message(item: dict[str, Any]) -> bool:
    if item.get("role") != "user":
        return False
    texts = _input_texts(item.get("content"))
    return bool(texts) and all(is_injected_text(text) for text in texts)


def _input_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content] if content.strip() else []
    texts: list[str] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") in ("input_text", "text"):
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                texts.append(text)
    return texts


# --- usage --------------------------------------------------------------------------------------


def usage_from_fields(usage: dict[str, Any], response_id: str | None, copilot_usage: Any = None) -> TokenUsage:
    """Maps `response.usage`: cached (and cache-write) tokens are inside input_tokens, so subtracted."""
    input_details = usage.get("input_tokens_details")
    input_details = input_details if isinstance(input_details, dict) else {}
    output_details = usage.get("output_tokens_details")
    output_details = output_details if isinstance(output_details, dict) else {}
    cached = as_int(input_details.get("cached_tokens"))
    cache_write = as_int(input_details.get("cache_write_tokens"))
    metadata: dict[str, Any] = {}
    if "reasoning_tokens" in output_details:
        metadata["output_reasoning"] = as_int(output_details["reasoning_tokens"])
    if "total_tokens" in usage:
        metadata["total_tokens"] = as_int(usage["total_tokens"])
    if isinstance(copilot_usage, dict):
        metadata["copilot_usage"] = copilot_usage
    return TokenUsage(
        provider_response_id=response_id,
        input_tokens=max(as_int(usage.get("input_tokens")) - cached - cache_write, 0),
        output_tokens=as_int(usage.get("output_tokens")),
        cache_read_input_tokens=cached,
        cache_write_input_tokens=cache_write,
        metadata=metadata,
    )


# --- responses ----------------------------------------------------------------------------------


def parse_response(body: dict[str, Any]) -> ResponseSummary:
    """A blocking Response object (or an error body)."""
    parser = StreamParser()
    if isinstance(body, dict):
        parser._take_body(body)
    summary = parser.summary()
    summary.complete = True
    return summary


class StreamParser:
    """Folds Responses SSE events into a ResponseSummary as they pass."""

    def __init__(self) -> None:
        self._response_id: str | None = None
        self._model: str | None = None
        self._usage: dict[str, Any] | None = None
        self._copilot_usage: Any = None  # Copilot's own billing object, next to `response`
        self._items: dict[int, OutputItem] = {}
        self._open_commentary: set[int] = set()  # output indexes of commentary messages still streaming
        self._error: str | None = None
        self._complete = False
        self._finish_reason: str | None = None

    def skips(self, name: str | None, data: bytes) -> bool:
        """True when `on_event` would ignore this block (see `sse.lone_block`): the hot path."""
        return name is not None and not self._worth_parsing(name)

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if data is None or not self._worth_parsing(event.event):
            return
        message = loads_object(data)
        if message is None:
            return
        kind = message.get("type")
        kind = kind if isinstance(kind, str) else event.event
        if kind in _START_EVENTS:
            if self._response_id is None:
                self._take_response_ids(message.get("response"))
        elif kind in _TERMINAL_EVENTS:
            self._on_terminal(kind, message)
        elif kind == "error":
            error = message.get("error")
            self._error = error_text(error if isinstance(error, dict) else message)
            self._complete = True
        else:
            self._on_item_event(kind, message)

    def summary(self) -> ResponseSummary:
        response_id = self._response_id
        summary = ResponseSummary(
            response_id=response_id,
            model=self._model,
            error=self._error,
            complete=self._complete,
            finish_reasons=[self._finish_reason] if self._finish_reason else [],
        )
        if self._usage is not None:
            summary.usage = usage_from_fields(self._usage, response_id, self._copilot_usage)
        seen_call_ids: set[str] = set()
        for index in sorted(self._items):
            item = self._items[index]
            summary.thoughts.extend(item.thoughts(response_id))
            call = item.tool_call(response_id)
            if call is None or (call.call_id and call.call_id in seen_call_ids):
                continue
            seen_call_ids.add(call.call_id)
            summary.tool_calls.append(call)
        return summary

    def _take_body(self, body: dict[str, Any]) -> None:
        """A whole Response object, as a blocking call returns it."""
        if body.get("error"):
            self._error = error_text(body["error"])
        self._take_response(body, body.get("copilot_usage"))

    def _worth_parsing(self, name: str | None) -> bool:
        if name is None:
            return True  # no `event:` line: only the JSON says what this is
        if name in _TEXT_EVENTS:
            return bool(self._open_commentary)
        if name in _START_EVENTS:
            return self._response_id is None
        return name in _HANDLED_EVENTS

    def _on_terminal(self, kind: str, message: dict[str, Any]) -> None:
        self._complete = True
        response = message.get("response")
        if kind == "response.failed":
            error = response.get("error") if isinstance(response, dict) else None
            self._error = error_text(error) if error else "response.failed"
        if isinstance(response, dict):
            self._take_response(response, message.get("copilot_usage"))

    def _take_response_ids(self, response: Any) -> None:
        if isinstance(response, dict):
            self._response_id = str_or_none(response.get("id")) or self._response_id
            self._model = str_or_none(response.get("model")) or self._model

    def _take_response(self, response: dict[str, Any], copilot_usage: Any) -> None:
        """A complete Response object: final ids, usage, and any output item not seen yet."""
        self._take_response_ids(response)
        # The Responses API has no finish reason: the status, or why it is incomplete (max_output_tokens, …).
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        self._finish_reason = str_or_none(reason) or str_or_none(response.get("status")) or self._finish_reason
        usage = response.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
            self._copilot_usage = copilot_usage
        output = response.get("output")
        for index, item in enumerate(output if isinstance(output, list) else ()):
            if isinstance(item, dict) and not self._item(index).done:
                self._item(index).fill_from(item)

    def _item(self, index: int) -> OutputItem:
        item = self._items.get(index)
        if item is None:
            item = self._items[index] = OutputItem()
        return item

    def _on_item_event(self, kind: str | None, message: dict[str, Any]) -> None:
        index = message.get("output_index")
        if not isinstance(index, int) or isinstance(index, bool):
            return
        if kind == "response.output_item.added" or kind == "response.output_item.done":
            payload = message.get("item")
            if isinstance(payload, dict):
                self._on_output_item(index, payload, done=kind == "response.output_item.done")
            return
        item = self._item(index)
        if item.done:
            return
        delta = message.get("delta")
        if kind == "response.function_call_arguments.delta":
            item.type = item.type or "function_call"
            _append(item.input_parts, delta)
        elif kind == "response.custom_tool_call_input.delta":
            item.type = item.type or "custom_tool_call"
            _append(item.input_parts, delta)
        elif kind == "response.function_call_arguments.done":
            item.type = item.type or "function_call"
            item.final_input = _str_or(message.get("arguments"), item.final_input)
            item.name = str_or_none(message.get("name")) or item.name
        elif kind == "response.custom_tool_call_input.done":
            item.type = item.type or "custom_tool_call"
            item.final_input = _str_or(message.get("input"), item.final_input)
        elif kind == "response.reasoning_summary_text.delta":
            item.type = item.type or "reasoning"
            _append(item.summaries.setdefault(_sub_index(message, "summary_index"), []), delta)
        elif kind == "response.reasoning_summary_text.done":
            item.type = item.type or "reasoning"
            _replace(item.summaries, _sub_index(message, "summary_index"), message.get("text"))
        elif kind == "response.reasoning_text.delta":
            item.type = item.type or "reasoning"
            _append(item.reasoning.setdefault(_sub_index(message, "content_index"), []), delta)
        elif kind == "response.reasoning_text.done":
            item.type = item.type or "reasoning"
            _replace(item.reasoning, _sub_index(message, "content_index"), message.get("text"))
        elif index in self._open_commentary:
            if kind == "response.output_text.delta":
                _append(item.texts.setdefault(_sub_index(message, "content_index"), []), delta)
            elif kind == "response.output_text.done":
                _replace(item.texts, _sub_index(message, "content_index"), message.get("text"))

    def _on_output_item(self, index: int, payload: dict[str, Any], done: bool) -> None:
        item = self._item(index)
        if done:
            item.fill_from(payload)
            self._open_commentary.discard(index)
            return
        if item.done:
            return
        item.type = str_or_none(payload.get("type")) or item.type
        item.item_id = str_or_none(payload.get("id")) or item.item_id
        item.call_id = str_or_none(payload.get("call_id")) or item.call_id
        item.name = str_or_none(payload.get("name")) or item.name
        item.phase = str_or_none(payload.get("phase")) or item.phase
        if item.type == "message" and item.phase == "commentary":
            self._open_commentary.add(index)


def _sub_index(message: dict[str, Any], key: str) -> int:
    value = message.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _append(parts: list[str], piece: Any) -> None:
    if isinstance(piece, str) and piece:
        parts.append(piece)


def _replace(texts: dict[int, list[str]], index: int, text: Any) -> None:
    if isinstance(text, str):
        texts[index] = [text]


def _str_or(value: Any, default: str | None) -> str | None:
    return value if isinstance(value, str) else default
