"""OpenTelemetry export (opt-in): one span per interception and the GenAI client metrics, over OTLP/HTTP.

Imported only when `--aibridge-otel` (or an OTLP endpoint variable) turns it on, so a gateway
without it loads none of the SDK. `OtelSink` consumes the recorder's records like the
structured log and the Prometheus sink: it keeps what an interception produced until the end
record, then enqueues it for the hand-off thread, which builds the finished span from the
records' own times (no span object lives across a stream), records the measurements and hands
the span to the SDK's batch processor, whose thread exports it. A slow or dead collector only
fills those bounded queues; what does not fit is dropped and counted in
`coder_aibridged_otel_dropped_spans_total`, and traffic never waits for it.

Span ids come from the interception id (its low 64 bits), trace ids too (the whole UUID) unless
the client sent a `traceparent`, whose trace the span then joins as a child. So the traceparent
sent upstream (`--aibridge-otel-propagate-upstream`) is computed from the id alone, and a request
answering a tool call links to the span of the interception that made the call (found through
the call id, as the writer finds `thread_parent_id`).

Attributes follow the GenAI semantic conventions (development status, as of semantic-conventions
v1.40): `gen_ai.usage.input_tokens` includes cache reads and writes there, while aigw's rows
exclude them, so it is the sum of the three.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from queue import Full, Queue
from typing import Any
from urllib.parse import urlsplit

import orjson
from mitmproxy import http
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from prometheus_client import Counter

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
from addons.settings.config import Instance, Settings
from addons.sinks import metrics, redaction

log = logging.getLogger("aigw.otel")

DROPPED_SPANS = Counter(
    metrics.PREFIX + "otel_dropped_spans_total",
    "Interceptions not exported (span and measurements) because an OpenTelemetry queue was full.",
    registry=metrics.REGISTRY)

CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_SCOPE = InstrumentationScope("aigw")
# The semantic conventions' advised bucket boundaries (seconds; tokens).
_SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_LOW64 = (1 << 64) - 1
SHUTDOWN_SECONDS = 3.0  # the most stopping the export may add to a gateway's stop
# What the OTLP exporters accept in OTEL_EXPORTER_OTLP_*HEADERS (the SDK's "liberal" parsing: the
# specification's name=value list, values URL-encoded or with spaces). The SDK logs any other entry
# whole, a collector token included, and exports without it.
_HEADER_ENTRY = re.compile(r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*="
                           r"[ \t]*[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*[ \t]*")
_HEADER_DELIMITER = re.compile(r"[ \t]*,[ \t]*")


class OtelSetupError(Exception):
    """The OTEL_* variables ask for something aigw does not export (startup error)."""


# --------------------------------------------------------------------------- ids and trace context


def span_id_of(interception_id: str) -> int:
    return (uuid.UUID(interception_id).int & _LOW64) or 1


def trace_id_of(interception_id: str) -> int:
    return uuid.UUID(interception_id).int or 1


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C traceparent, else None."""
    m = _TRACEPARENT.fullmatch(value.strip().lower()) if value else None
    if m is None or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(m.group(4), 16)


def span_context(interception_id: str, inbound: str | None,
                 tracestate: str | None = None) -> tuple[SpanContext, SpanContext | None]:
    """The interception span's context, and its remote parent (the client's span) if it sent one."""
    parent = parse_traceparent(inbound)
    span_id = span_id_of(interception_id)
    if parent is None:
        return SpanContext(trace_id_of(interception_id), span_id, False, TraceFlags(TraceFlags.SAMPLED)), None
    trace_id, parent_span, flags = parent
    flags &= TraceFlags.SAMPLED  # parent-based sampling: an unsampled caller gets no span from us either
    state = TraceState.from_header([tracestate]) if tracestate else None
    remote = SpanContext(trace_id, parent_span, True, TraceFlags(flags), state)
    return SpanContext(trace_id, span_id, False, TraceFlags(flags), state), remote


def traceparent_of(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


# --------------------------------------------------------------------------- export pipeline


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor drops spans when its queue is full and only logs it: drop (the newest)
    here instead, and count it. Exact because the hand-off thread is the only producer: between the
    check and the append the export thread can only make room."""

    def on_end(self, span: ReadableSpan) -> None:
        batch = self._batch_processor
        if len(batch._queue) >= batch._max_queue_size:
            DROPPED_SPANS.inc()
            return
        super().on_end(span)


class HandOff:
    """The thread that turns ended interceptions into spans and measurements: the SDK's attribute
    checks and histogram locks cost far more than the loop should pay, so the loop only enqueues.
    Bounded: when full, the interception is not exported and counted as dropped."""

    def __init__(self, size: int = 2048) -> None:
        self.queue: Queue[Callable[[], None] | None] = Queue(size)
        self.thread = threading.Thread(target=self._run, name="aigw-otel", daemon=True)
        self.thread.start()

    def put(self, job: Callable[[], None]) -> None:
        try:
            self.queue.put_nowait(job)
        except Full:
            DROPPED_SPANS.inc()

    def _run(self) -> None:
        while (job := self.queue.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("OpenTelemetry: exporting an interception failed")

    def flush(self, timeout: float) -> bool:
        """Wait until everything enqueued before has been handed to the exporters."""
        done = threading.Event()
        try:
            self.queue.put(done.set, timeout=timeout)
        except Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float) -> None:
        try:
            self.queue.put(None, timeout=timeout)
        except Full:
            return
        self.thread.join(timeout)


@dataclass
class Pipeline:
    resource: Resource
    spans: BatchSpanProcessor | None
    meters: MeterProvider | None
    hand_off: HandOff = field(default_factory=HandOff)

    def shutdown(self, budget: float = SHUTDOWN_SECONDS) -> None:
        """Hand what is queued to the collector, for at most `budget` seconds in all. The SDK's own
        timeouts do not bound it (`force_flush` ignores its timeout, and a collector that accepts but
        never answers holds each export for the exporter's whole timeout), so the stop runs on a
        daemon thread the process leaves behind when the budget is spent."""
        stopper = threading.Thread(target=self._stop, args=(time.monotonic() + budget,), name="aigw-otel-stop",
                                   daemon=True)
        stopper.start()
        stopper.join(budget)
        if stopper.is_alive():
            log.warning("OpenTelemetry: the collector did not take the last spans and measurements within "
                        "%g s; stopping without them", budget)

    def _stop(self, deadline: float) -> None:
        def left_ms() -> int:
            return max(0, int((deadline - time.monotonic()) * 1000))

        self.hand_off.close(left_ms() / 1000)
        if self.spans is not None:
            self.spans.shutdown()  # the export thread sends what is queued; then the exporter is closed
        if self.meters is not None and left_ms() > 0:
            try:
                self.meters.shutdown(timeout_millis=left_ms())
            except Exception as e:  # the SDK raises when a reader did not finish in time
                log.warning("OpenTelemetry: %s", e)


def _exporter_choice(environ: Mapping[str, str], name: str) -> str:
    value = (environ.get(name) or "otlp").strip().lower()
    if value not in ("otlp", "none"):
        raise OtelSetupError(f"{name}={value!r} is not supported (aigw exports otlp or none)")
    return value


def check_headers(environ: Mapping[str, str]) -> None:
    """Refuse OTEL_EXPORTER_OTLP_*HEADERS the exporters would half-read (naming the variable, never
    its value: it usually holds the collector's token)."""
    for name in sorted(environ):
        if not (name.startswith("OTEL_EXPORTER_OTLP_") and name.endswith("HEADERS")):
            continue
        entries = [e for e in _HEADER_DELIMITER.split(environ[name]) if e.strip()]
        if not all(_HEADER_ENTRY.fullmatch(e.strip()) for e in entries):
            raise OtelSetupError(f"{name} is not a comma-separated list of name=value pairs "
                                 "(e.g. authorization=Bearer%20TOKEN); its value is not shown")


def build_pipeline(environ: Mapping[str, str] | None = None) -> Pipeline:
    """Exporters from the standard OTEL_* variables; the OTLP exporters read their own endpoint,
    headers, timeout, compression and TLS variables. Raises OtelSetupError."""
    environ = os.environ if environ is None else environ
    check_headers(environ)
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"):
        protocol = (environ.get(name) or "http/protobuf").strip().lower()
        if protocol != "http/protobuf":
            raise OtelSetupError(f"{name}={protocol!r} is not supported (aigw exports OTLP over http/protobuf)")
    traces = _exporter_choice(environ, "OTEL_TRACES_EXPORTER")
    metric_choice = _exporter_choice(environ, "OTEL_METRICS_EXPORTER")
    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "aigw"}))
    exporter = OTLPSpanExporter() if traces == "otlp" else None
    processor = CountingBatchSpanProcessor(exporter) if exporter is not None else None
    meters = None
    if metric_choice == "otlp":
        # OTEL_METRIC_EXPORT_INTERVAL / _TIMEOUT are read by the reader.
        # Stopped by Pipeline.shutdown, within its budget; not again at exit, for up to 30 s.
        meters = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())],
                               shutdown_on_exit=False)
    return Pipeline(resource, processor, meters)


# --------------------------------------------------------------------------- records -> spans


@dataclass(slots=True)
class _Open:
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


@dataclass(frozen=True, slots=True)
class _Caller:
    """What a later request answering one of this interception's tool calls needs to know."""

    context: SpanContext
    interception_id: str
    thread_root_id: str | None


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
        self.price = price
        self.capture_content = (environ.get(CAPTURE_CONTENT) or "").strip().lower() == "true"
        self.secrets = redaction.configured_secrets(settings)
        self.open: dict[str, _Open] = {}
        # provider_tool_call_id -> the interception that made the call (bounded, oldest forgotten)
        self.callers: dict[str, _Caller] = {}
        self.token_usage = self.duration = self.first_chunk = None
        if pipeline.meters is not None:
            meter = pipeline.meters.get_meter("aigw")
            self.token_usage = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS)
            self.duration = meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS)
            self.first_chunk = meter.create_histogram(
                "gen_ai.client.operation.time_to_first_chunk", unit="s",
                description="Time to receive the first chunk of a streaming response.",
                explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS)

    def __call__(self, record: Record) -> None:
        kind = type(record)
        if kind is InterceptionStart:
            self.started(record)  # type: ignore[arg-type]
        elif kind is InterceptionEnd:
            self.ended(record)  # type: ignore[arg-type]
        elif (o := self.open.get(record.interception_id)) is not None:  # type: ignore[union-attr]
            if kind is TokenUsageRecord:
                o.usage = record  # type: ignore[assignment]
            elif kind is ToolUsageRecord:
                o.tools.append(record)  # type: ignore[arg-type]
            elif kind is PromptRecord:
                o.prompt = record.prompt  # type: ignore[union-attr]
            elif kind is ThoughtRecord and self.capture_content:
                o.thoughts.append(record.content)  # type: ignore[union-attr]

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
        self.open[r.id] = _Open(r, ctx, parent, link, thread_parent, thread_root)

    def ended(self, end: InterceptionEnd) -> None:
        o = self.open.pop(end.id, None)
        if o is None:
            return
        for tool in o.tools:
            if len(self.callers) >= self.MAX_CALLS:
                self.callers.pop(next(iter(self.callers)))
            self.callers[tool.provider_tool_call_id] = _Caller(o.context, o.start.id, o.thread_root_id)
        self.pipeline.hand_off.put(partial(self.export, o, end))

    def export(self, o: _Open, end: InterceptionEnd) -> None:
        """On the hand-off thread: the span to the batch processor, the measurements to the meters."""
        common = self.common_attributes(o, end)
        if self.pipeline.spans is not None and o.context.trace_flags.sampled:
            self.pipeline.spans.on_end(self.span(o, end, common))
        if self.duration is not None:
            self.record_metrics(o, end, common)

    # -- mapping -----------------------------------------------------------------

    def common_attributes(self, o: _Open, end: InterceptionEnd) -> dict[str, Any]:
        """The attributes spans and metrics share (low cardinality)."""
        start = o.start
        instance = self.settings.instance(start.provider_name)
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

    def span(self, o: _Open, end: InterceptionEnd, common: dict[str, Any]) -> ReadableSpan:
        start = o.start
        attrs = dict(common)
        route = str(start.metadata.get("route") or "")
        if attrs["gen_ai.provider.name"] in ("openai", "github_copilot") and route in _OPENAI_API_TYPES:
            attrs["openai.api.type"] = _OPENAI_API_TYPES[route]
        if start.metadata.get("stream") is True:
            attrs["gen_ai.request.stream"] = True
            if end.first_chunk_at is not None:
                attrs["gen_ai.response.time_to_first_chunk"] = _seconds(start.started_at, end.first_chunk_at)
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
            name, context=o.context, parent=o.parent, resource=self.pipeline.resource, attributes=attrs,
            events=events, links=links, kind=SpanKind.CLIENT, status=status,
            start_time=_nanos(start.started_at), end_time=_nanos(end.ended_at), instrumentation_scope=_SCOPE)

    def tool_event(self, tool: ToolUsageRecord, o: _Open) -> Event:
        # The model chose a tool; the client runs it. `execute_tool` spans belong to whoever runs it.
        attrs: dict[str, Any] = {"gen_ai.tool.name": tool.tool, "gen_ai.tool.call.id": tool.provider_tool_call_id,
                                 "gen_ai.tool.type": "extension" if tool.injected else "function",
                                 "aigw.tool.injected": tool.injected}
        if tool.server_url:
            attrs["aigw.tool.server_url"] = redaction.redact_url(tool.server_url)
        if self.capture_content:
            attrs["gen_ai.tool.call.arguments"] = self.redact(tool.input, o)
        return Event("gen_ai.tool.call", attrs, _nanos(tool.created_at))

    def content(self, o: _Open, end: InterceptionEnd) -> dict[str, str]:
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

    def redact(self, text: str, o: _Open) -> str:
        return redaction.scrub(text, self.secrets | o.credentials)

    def record_metrics(self, o: _Open, end: InterceptionEnd, common: dict[str, Any]) -> None:
        assert self.duration is not None and self.token_usage is not None and self.first_chunk is not None
        start = o.start
        self.duration.record(_seconds(start.started_at, end.ended_at), common)
        base = {k: v for k, v in common.items() if k != "error.type"}
        if o.usage is not None:
            u = o.usage
            total_input = u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens
            self.token_usage.record(total_input, {**base, "gen_ai.token.type": "input"})
            self.token_usage.record(u.output_tokens, {**base, "gen_ai.token.type": "output"})
        if end.first_chunk_at is not None and start.metadata.get("stream") is True:
            self.first_chunk.record(_seconds(start.started_at, end.first_chunk_at), base)


_OPENAI_API_TYPES = {"/chat/completions": "chat_completions", "/responses": "responses"}


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


def _nanos(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000) * 1000


def _seconds(since: datetime, until: datetime) -> float:
    return max(0.0, (until - since).total_seconds())


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


# --------------------------------------------------------------------------- upstream propagation


class PropagateUpstream:
    """Addon (--aibridge-otel-propagate-upstream): intercepted requests go upstream with the gateway's
    own traceparent (a child of the client's, if it sent one). Runs after the interceptor."""

    def __init__(self, flows: FlowStates) -> None:
        self.flows = flows

    def request(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is not None or ctx.interception is None or ctx.interception.ended:
            return
        span, _parent = span_context(ctx.interception.id, flow.request.headers.get("traceparent"))
        flow.request.headers["traceparent"] = traceparent_of(span)
