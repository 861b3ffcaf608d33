"""Parsers for clients that call Bedrock natively (boto3 / AWS SDKs) through the proxy.

- Converse (`POST /model/{id}/converse`): `parse_request`, `parse_response`.
- ConverseStream (`/converse-stream`): `ConverseStreamParser`.
- InvokeModelWithResponseStream relayed byte-for-byte: `InvokeStreamParser`,
  which unwraps the Anthropic events and runs the Anthropic stream parser.

Usage rule: Bedrock's `inputTokens` is the *non-cached* input only; cache reads
and writes are reported separately (`cacheReadInputTokens`,
`cacheWriteInputTokens`; totalTokens = all four summed). AWS's prompt-caching
guide says so, and it matches the Anthropic convention `TokenUsage` uses, so
`inputTokens` is copied to `input_tokens` unchanged (never minus the cache counts).

The model id is not in a Converse body (it is in the URL), so callers pass it in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from addons.wire.anthropic import StreamParser
from addons.wire.eventstream import (
    INVOCATION_METRICS_KEY,
    EventStreamDecoder,
    EventStreamError,
    StreamFrame,
    converse_event,
    exception_to_anthropic_error,
    invoke_chunk_event,
)
from addons.wire.model import RequestInfo, ResponseSummary, Thought, TokenUsage, ToolCall, as_int, compact_json_text
from addons.wire.sse import SSEEvent

THOUGHT_SOURCE = "thinking"


def _loads(body: bytes | str | dict) -> dict:
    if isinstance(body, dict):
        return body
    try:
        value = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------
# Request


def parse_request(body: bytes | str | dict, *, model: str | None = None, stream: bool = False) -> RequestInfo:
    """Converse/ConverseStream request -> RequestInfo.

    `model` is the (unquoted) model id from the URL; `stream` is True for
    `/converse-stream`. Invalid JSON yields an empty RequestInfo.
    """
    data = _loads(body)
    messages = data.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    prompt = tool_id = None
    if isinstance(last, dict) and last.get("role") == "user":
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        prompt = _last_text(blocks)
        tool_id = _last_tool_result_id(blocks)
    return RequestInfo(model=model, stream=stream, prompt=prompt, correlating_tool_call_id=tool_id)


def _last_text(blocks: list) -> str | None:
    for block in reversed(blocks):
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            return block["text"]
    return None


def _last_tool_result_id(blocks: list) -> str | None:
    for block in reversed(blocks):
        result = block.get("toolResult") if isinstance(block, dict) else None
        if isinstance(result, dict) and result.get("toolUseId"):
            return str(result["toolUseId"])
    return None


# ---------------------------------------------------------------------------
# Usage


def converse_usage(usage: Any, *, response_id: str | None = None, metrics: Any = None) -> TokenUsage | None:
    """Converse `usage` (blocking body or stream `metadata`) -> TokenUsage (see module doc)."""
    if not isinstance(usage, dict):
        return None
    meta: dict[str, Any] = {}
    if isinstance(usage.get("totalTokens"), int):
        meta["total_tokens"] = usage["totalTokens"]
    if isinstance(metrics, dict) and isinstance(metrics.get("latencyMs"), int):
        meta["latency_ms"] = metrics["latencyMs"]
    return TokenUsage(
        provider_response_id=response_id,
        input_tokens=as_int(usage.get("inputTokens")),
        output_tokens=as_int(usage.get("outputTokens")),
        cache_read_input_tokens=as_int(usage.get("cacheReadInputTokens")),
        cache_write_input_tokens=as_int(usage.get("cacheWriteInputTokens")),
        metadata=meta,
    )


# ---------------------------------------------------------------------------
# Blocking response


def parse_response(
    body: bytes | str | dict, *, model: str | None = None, response_id: str | None = None
) -> ResponseSummary:
    """Converse blocking output -> ResponseSummary.

    Converse bodies carry no message id; pass the `x-amzn-RequestId` response
    header as `response_id` to link tool calls and thoughts to the response.
    """
    data = _loads(body)
    summary = ResponseSummary(response_id=response_id, model=model, complete=True)
    if isinstance(stop_reason := data.get("stopReason"), str) and stop_reason:
        summary.finish_reasons.append(stop_reason)
    summary.usage = converse_usage(data.get("usage"), response_id=response_id, metrics=data.get("metrics"))
    output = data.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict):
            _collect_block(block, summary, response_id)
    return summary


def _collect_block(block: dict, summary: ResponseSummary, response_id: str | None) -> None:
    tool = block.get("toolUse")
    if isinstance(tool, dict):
        summary.tool_calls.append(
            ToolCall(
                provider_response_id=response_id,
                call_id=str(tool.get("toolUseId", "")),
                name=str(tool.get("name", "")),
                input=orjson.dumps(tool.get("input", {})).decode(),
            )
        )
    reasoning = block.get("reasoningContent")
    text = reasoning.get("reasoningText") if isinstance(reasoning, dict) else None
    if isinstance(text, dict) and text.get("text"):
        summary.thoughts.append(Thought(str(text["text"]), THOUGHT_SOURCE, response_id))


# ---------------------------------------------------------------------------
# ConverseStream


@dataclass(slots=True)
class _ToolDraft:
    call_id: str
    name: str
    fragments: list[str] = field(default_factory=list)


class _FrameFeeder(ABC):
    """Shared bytes-in path for the stream parsers: decode frames, record corruption."""

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()
        self._corrupt: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Feed raw response bytes (the stream tap's chunks). Never raises."""
        if self._corrupt is not None or not chunk:
            return
        try:
            frames = self._decoder.feed(chunk)
        except EventStreamError as exc:
            frames = exc.frames
            self._corrupt = f"corrupted event stream frame: {exc}"
        for frame in frames:
            self.on_frame(frame)
        if self._corrupt is not None:
            self._record_error(self._corrupt)

    def close(self) -> None:
        """End of body: a partial frame left over means the stream was cut."""
        if self._corrupt is None and self._decoder.buffered:
            self._corrupt = f"event stream ended mid-frame ({self._decoder.buffered} bytes left over)"
            self._record_error(self._corrupt)

    @abstractmethod
    def on_frame(self, frame: StreamFrame) -> None: ...

    @abstractmethod
    def _record_error(self, message: str) -> None: ...


class ConverseStreamParser(_FrameFeeder):
    """Accumulates a ConverseStream response.

    Feed either decoded frames (`on_frame`) or raw bytes (`feed`, then `close`
    at end of body). `complete` becomes True at the `metadata` event (the last
    one Bedrock sends, after `messageStop`) or at an exception frame.
    """

    def __init__(self, *, model: str | None = None, response_id: str | None = None) -> None:
        super().__init__()
        self._summary = ResponseSummary(response_id=response_id, model=model)
        self._tools: dict[int, _ToolDraft] = {}
        self._reasoning: dict[int, list[str]] = {}
        self.stop_reason: str | None = None

    def on_frame(self, frame: StreamFrame) -> None:
        if frame.message_type in ("exception", "error"):
            err = exception_to_anthropic_error(frame)["error"]
            self._record_error(f"{frame.exception_type}: {err['message']}")
            self._summary.complete = True
            return
        decoded = converse_event(frame)
        if decoded is None:
            return
        kind, payload = decoded
        handler = self._HANDLERS.get(kind)
        if handler is not None:
            handler(self, payload)

    def _on_block_start(self, payload: dict) -> None:
        start = payload.get("start")
        tool = start.get("toolUse") if isinstance(start, dict) else None
        if isinstance(tool, dict):
            index = as_int(payload.get("contentBlockIndex"))
            self._tools[index] = _ToolDraft(str(tool.get("toolUseId", "")), str(tool.get("name", "")))

    def _on_block_delta(self, payload: dict) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        index = as_int(payload.get("contentBlockIndex"))
        tool = delta.get("toolUse")
        if isinstance(tool, dict) and isinstance(tool.get("input"), str) and index in self._tools:
            self._tools[index].fragments.append(tool["input"])
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
            self._reasoning.setdefault(index, []).append(reasoning["text"])

    def _on_message_stop(self, payload: dict) -> None:
        reason = payload.get("stopReason")
        self.stop_reason = reason if isinstance(reason, str) else None

    def _on_metadata(self, payload: dict) -> None:
        usage = converse_usage(
            payload.get("usage"), response_id=self._summary.response_id, metrics=payload.get("metrics")
        )
        if usage is not None:
            self._summary.usage = usage
        self._summary.complete = True

    _HANDLERS: dict[str, Callable[[ConverseStreamParser, dict], None]] = {
        "contentBlockStart": _on_block_start,
        "contentBlockDelta": _on_block_delta,
        "messageStop": _on_message_stop,
        "metadata": _on_metadata,
    }

    def _record_error(self, message: str) -> None:
        if self._summary.error is None:
            self._summary.error = message

    def summary(self) -> ResponseSummary:
        """A snapshot; tool calls and thoughts are in content-block order."""
        rid = self._summary.response_id
        s = self._summary
        tools = [
            ToolCall(rid, d.call_id, d.name, compact_json_text("".join(d.fragments)))
            for _, d in sorted(self._tools.items())
        ]
        thoughts = [
            Thought("".join(parts), THOUGHT_SOURCE, rid)
            for _, parts in sorted(self._reasoning.items())
            if "".join(parts)
        ]
        usage = None if s.usage is None else replace(s.usage, metadata=dict(s.usage.metadata))
        return ResponseSummary(
            response_id=rid,
            model=s.model,
            usage=usage,
            tool_calls=tools,
            thoughts=thoughts,
            error=s.error,
            complete=s.complete,
            finish_reasons=[self.stop_reason] if self.stop_reason else [],
        )


# ---------------------------------------------------------------------------
# InvokeModelWithResponseStream (native client, relayed byte-for-byte)


class InvokeStreamParser(_FrameFeeder):
    """Unwraps InvokeModelWithResponseStream chunk frames into the Anthropic stream parser.

    Exception frames become an Anthropic `error` event for that parser, so the
    summary's `error` is set the same way as for a first-party stream.
    `invocation_metrics` holds Bedrock's `amazon-bedrock-invocationMetrics`;
    they are also copied into `summary().usage.metadata["bedrock_invocation_metrics"]`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parser = StreamParser()
        self._stopped = False
        self.invocation_metrics: dict | None = None

    def on_frame(self, frame: StreamFrame) -> None:
        if self._stopped:
            return
        if frame.message_type in ("exception", "error"):
            self._deliver(exception_to_anthropic_error(frame))
            self._stopped = True
            return
        try:
            event = invoke_chunk_event(frame)
        except EventStreamError as exc:
            self._record_error(f"corrupted event stream frame: {exc}")
            return
        if event is None:
            return
        if event.get("type") == "message_stop" and isinstance(event.get(INVOCATION_METRICS_KEY), dict):
            self.invocation_metrics = event[INVOCATION_METRICS_KEY]
        self._deliver(event)

    def _deliver(self, event: dict) -> None:
        data = orjson.dumps(event)
        kind = str(event.get("type", "message"))
        raw = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        self._parser.on_event(SSEEvent(kind, data.decode(), raw))

    def _record_error(self, message: str) -> None:
        if not self._stopped:
            self._deliver({"type": "error", "error": {"type": "api_error", "message": message}})
            self._stopped = True

    def summary(self) -> ResponseSummary:
        summary = self._parser.summary()
        if self.invocation_metrics is not None and summary.usage is not None:
            summary.usage.metadata["bedrock_invocation_metrics"] = dict(self.invocation_metrics)
        return summary
