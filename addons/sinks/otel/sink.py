"""The recorder sink: keeps what each interception produced until its end record, then hands the span and
the measurements to the export pipeline."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from mitmproxy import http
from opentelemetry.trace import SpanContext

from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    Record,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.flow.state import FlowStates
from addons.settings.config import Settings
from addons.sinks import redaction
from addons.sinks.otel.genai_metrics import GenAiMetrics
from addons.sinks.otel.pipeline import Pipeline
from addons.sinks.otel.spans import OpenInterception, SpanBuilder, common_attributes
from addons.sinks.otel.trace_context import span_context

CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


@dataclass(frozen=True, slots=True)
class _Caller:
    """What a later request answering one of this interception's tool calls needs to know."""

    context: SpanContext
    interception_id: str
    thread_root_id: str | None


class OtelSink:
    """Recorder sink: builds one span per interception when it ends and records the GenAI metrics."""

    MAX_OPEN = 100_000
    MAX_CALLS = 100_000

    def __init__(self, settings: Settings, flows: FlowStates, pipeline: Pipeline,
                 price: Callable[[TokenUsageRecord], float | None] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.settings = settings
        self.flows = flows
        self.pipeline = pipeline
        self.capture_content = (environ.get(CAPTURE_CONTENT) or "").strip().lower() == "true"
        self.builder = SpanBuilder(price, self.capture_content, redaction.configured_secrets(settings))
        self.open: dict[str, OpenInterception] = {}
        # provider_tool_call_id -> the interception that made the call (bounded, oldest forgotten)
        self.callers: dict[str, _Caller] = {}
        self.measures = GenAiMetrics(pipeline.meters) if pipeline.meters is not None else None

    def __call__(self, record: Record) -> None:
        match record:
            case InterceptionStart():
                self.started(record)
            case InterceptionEnd():
                self.ended(record)
            case _ if (o := self.open.get(record.interception_id)) is None:
                pass  # a record of an interception this sink never saw start
            case TokenUsageRecord():
                o.usage = record
            case ToolUsageRecord():
                o.tools.append(record)
            case PromptRecord():
                o.prompt = record.prompt
            case ThoughtRecord() if self.capture_content:
                o.thoughts.append(record.content)

    def request(self, flow: http.HTTPFlow) -> None:
        """Addon hook (after the interceptor): the credentials this request carries upstream are scrubbed
        from its span (content, error text) as the dumps and the web UI scrub them. Held here until the
        span is built, never put in a record."""
        ctx = self.flows.get(flow)
        if ctx is None or ctx.interception is None or (o := self.open.get(ctx.interception.id)) is None:
            return
        values = redaction.credential_values(flow.request.headers.items(multi=True))
        if ctx.client_credential:
            values.add(ctx.client_credential)
        o.credentials = frozenset(values)

    def started(self, r: InterceptionStart) -> None:
        if len(self.open) >= self.MAX_OPEN:  # an end never came; do not grow without bound
            self.open.pop(next(iter(self.open)))
        ctx, parent = span_context(r.id, r.traceparent, r.tracestate)
        link = None
        thread_parent = thread_root = None
        caller = self.callers.get(r.correlating_tool_call_id) if r.correlating_tool_call_id else None
        if caller is not None:
            link = (caller.context, r.correlating_tool_call_id or "")
            thread_parent = caller.interception_id
            thread_root = caller.thread_root_id or caller.interception_id
        self.open[r.id] = OpenInterception(r, ctx, parent, link, thread_parent, thread_root)

    def ended(self, end: InterceptionEnd) -> None:
        o = self.open.pop(end.id, None)
        if o is None:
            return
        for tool in o.tools:
            if len(self.callers) >= self.MAX_CALLS:
                self.callers.pop(next(iter(self.callers)))
            self.callers[tool.provider_tool_call_id] = _Caller(o.context, o.start.id, o.thread_root_id)
        self.pipeline.hand_off.put(partial(self.export, o, end))

    def export(self, o: OpenInterception, end: InterceptionEnd) -> None:
        """On the hand-off thread: the span to the batch processor, the measurements to the meters."""
        common = common_attributes(self.settings, o, end)
        if self.pipeline.spans is not None and o.context.trace_flags.sampled:
            self.pipeline.spans.on_end(self.builder.span(o, end, common, self.pipeline.resource))
        if self.measures is not None:
            self.measures.record(o, end, common)
