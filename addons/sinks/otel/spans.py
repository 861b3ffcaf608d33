"""An interception's finished span, built from its records once it ended, with the GenAI attributes it
shares with the measurements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from addons.flow.records import InterceptionEnd, InterceptionStart, TokenUsageRecord, ToolUsageRecord
from addons.settings.config import Settings
from addons.settings.instances import Instance
from addons.sinks import redaction

_SCOPE = InstrumentationScope("aigw")
_OPENAI_API_TYPES = {"/chat/completions": "chat_completions", "/responses": "responses"}


@dataclass(slots=True)
class OpenInterception:
    """What the sink keeps of an interception from its start record to its end record."""

    start: InterceptionStart
    context: SpanContext
    parent: SpanContext | None
    link: tuple[SpanContext, str] | None  # (span that made the answered tool call, call id)
    thread_parent_id: str | None
    thread_root_id: str | None
    usage: TokenUsageRecord | None = None
    tools: list[ToolUsageRecord] = field(default_factory=list)
    prompt: str | None = None
    thoughts: list[str] = field(default_factory=list)
    credentials: frozenset[str] = frozenset()  # the request's own (BYOK key, …): scrubbed from content


def provider_name(instance_type: str, instance: Instance | None) -> str:
    """`gen_ai.provider.name`: the conventions' well-known value where one applies."""
    if instance_type == "bedrock" or (instance is not None and instance.bedrock is not None):
        return "aws.bedrock"
    if instance_type == "copilot":
        return "github_copilot"
    return instance_type  # anthropic | openai


def server_of(instance: Instance | None) -> tuple[str, int] | None:
    """(host, port) the instance's requests go to."""
    if instance is None:
        return None
    url = instance.bedrock.endpoint if instance.bedrock is not None else instance.base_url
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def error_type(end: InterceptionEnd) -> str | None:
    """A low-cardinality `error.type`: the upstream's HTTP status, else what kind of failure it was."""
    if end.status != "failed":
        return None
    status = end.metadata.get("http_status")
    if isinstance(status, int) and status >= 400:
        return str(status)
    if status is None:
        return "connection_error"  # no response: refused, TLS, timeout, reset
    return "response_error"  # a 200 whose body or stream reported a failure or was cut


def common_attributes(settings: Settings, o: OpenInterception, end: InterceptionEnd) -> dict[str, Any]:
    """The attributes spans and metrics share (low cardinality)."""
    start = o.start
    instance = settings.instance(start.provider_name)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name(start.provider, instance),
        "aigw.instance": start.provider_name,
    }
    if start.model:
        attrs["gen_ai.request.model"] = start.model
    if isinstance(model := end.metadata.get("upstream_model"), str):
        attrs["gen_ai.response.model"] = model
    if (server := server_of(instance)) is not None:
        attrs["server.address"], attrs["server.port"] = server
    if (err := error_type(end)) is not None:
        attrs["error.type"] = err
    return attrs


class SpanBuilder:
    """Builds the span of an ended interception; message content only when capture is turned on, scrubbed
    of the configured secrets and the request's own credentials."""

    def __init__(self, price: Callable[[TokenUsageRecord], float | None] | None, capture_content: bool,
                 secrets: frozenset[str]) -> None:
        self.price = price
        self.capture_content = capture_content
        self.secrets = secrets

    def span(self, o: OpenInterception, end: InterceptionEnd, common: dict[str, Any],
             resource: Resource) -> ReadableSpan:
        start = o.start
        attrs = dict(common)
        route = str(start.metadata.get("route") or "")
        if attrs["gen_ai.provider.name"] in ("openai", "github_copilot") and route in _OPENAI_API_TYPES:
            attrs["openai.api.type"] = _OPENAI_API_TYPES[route]
        if start.metadata.get("stream") is True:
            attrs["gen_ai.request.stream"] = True
            if end.first_chunk_at is not None:
                attrs["gen_ai.response.time_to_first_chunk"] = seconds(start.started_at, end.first_chunk_at)
        if isinstance(response_id := end.metadata.get("response_id"), str):
            attrs["gen_ai.response.id"] = response_id
        if end.finish_reasons:
            attrs["gen_ai.response.finish_reasons"] = end.finish_reasons
        if o.usage is not None:
            attrs.update(usage_attributes(o.usage))
            if self.price is not None and (usd := self.price(o.usage)) is not None:
                attrs["aigw.cost_usd"] = usd
        attrs["gen_ai.conversation.id"] = start.client_session_id or o.thread_root_id or start.id
        attrs["aigw.interception_id"] = start.id
        attrs["aigw.status"] = end.status
        attrs["aigw.client"] = start.client
        attrs["aigw.initiator"] = start.initiator_id
        attrs["aigw.credential_kind"] = start.credential_kind
        if route:
            attrs["aigw.route"] = route
        if o.thread_root_id is not None:
            attrs["aigw.thread_parent_id"] = o.thread_parent_id
            attrs["aigw.thread_root_id"] = o.thread_root_id
        if isinstance(http_status := end.metadata.get("http_status"), int):
            attrs["http.response.status_code"] = http_status
        if self.capture_content:
            attrs.update(self.content(o, end))
        status = Status(StatusCode.UNSET)
        if end.status == "failed":
            status = Status(StatusCode.ERROR, self.redact(str(end.metadata.get("error") or "failed"), o))
        events = [self.tool_event(t, o) for t in o.tools]
        links = []
        if o.link is not None:
            links.append(Link(o.link[0], {"aigw.relation": "thread_parent", "gen_ai.tool.call.id": o.link[1]}))
        name = f"chat {start.model}" if start.model else "chat"
        return ReadableSpan(
            name, context=o.context, parent=o.parent, resource=resource, attributes=attrs,
            events=events, links=links, kind=SpanKind.CLIENT, status=status,
            start_time=_nanos(start.started_at), end_time=_nanos(end.ended_at), instrumentation_scope=_SCOPE)

    def tool_event(self, tool: ToolUsageRecord, o: OpenInterception) -> Event:
        # The model chose a tool; the client runs it. `execute_tool` spans belong to whoever runs it.
        attrs: dict[str, Any] = {"gen_ai.tool.name": tool.tool, "gen_ai.tool.call.id": tool.provider_tool_call_id,
                                 "gen_ai.tool.type": "extension" if tool.injected else "function",
                                 "aigw.tool.injected": tool.injected}
        if tool.server_url:
            attrs["aigw.tool.server_url"] = redaction.redact_url(tool.server_url)
        if self.capture_content:
            attrs["gen_ai.tool.call.arguments"] = self.redact(tool.input, o)
        return Event("gen_ai.tool.call", attrs, _nanos(tool.created_at))

    def content(self, o: OpenInterception, end: InterceptionEnd) -> dict[str, str]:
        """Opt-in message content (what aigw records: the last typed prompt, thoughts, tool calls)."""
        out: dict[str, str] = {}
        if o.prompt:
            out["gen_ai.input.messages"] = self.redact(_json(
                [{"role": "user", "parts": [{"type": "text", "content": o.prompt}]}]), o)
        parts: list[dict[str, Any]] = [{"type": "reasoning", "content": t} for t in o.thoughts]
        parts += [{"type": "tool_call", "id": t.provider_tool_call_id, "name": t.tool, "arguments": _arguments(t.input)}
                  for t in o.tools]
        if parts:
            reason = end.finish_reasons[0] if end.finish_reasons else "tool_call" if o.tools else "stop"
            out["gen_ai.output.messages"] = self.redact(_json(
                [{"role": "assistant", "parts": parts, "finish_reason": reason}]), o)
        return out

    def redact(self, text: str, o: OpenInterception) -> str:
        return redaction.scrub(text, self.secrets | o.credentials)


def usage_attributes(u: TokenUsageRecord) -> dict[str, int]:
    attrs = {
        "gen_ai.usage.input_tokens": u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
        "gen_ai.usage.output_tokens": u.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": u.cache_read_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": u.cache_write_input_tokens,
    }
    reasoning = u.metadata.get("reasoning_tokens")
    if isinstance(reasoning, int) and not isinstance(reasoning, bool):
        attrs["gen_ai.usage.reasoning.output_tokens"] = reasoning
    return attrs


def seconds(since: datetime, until: datetime) -> float:
    return max(0.0, (until - since).total_seconds())


def _nanos(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000) * 1000


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
