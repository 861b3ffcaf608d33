"""OpenTelemetry export (addons/sinks/otel/): records -> spans and GenAI metrics, trace context, drop counting."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.flow.state import FlowStates, Interception
from addons.providers.base import Api
from addons.settings import loader
from addons.settings.config import Settings
from addons.settings.instances import BedrockSettings, Instance
from addons.sinks import metrics
from addons.sinks.metrics import Metrics
from addons.sinks.otel.pipeline import CountingBatchSpanProcessor, HandOff, OtelSetupError, Pipeline, build_pipeline
from addons.sinks.otel.sink import CAPTURE_CONTENT, OtelSink
from addons.sinks.otel.spans import provider_name, server_of
from addons.sinks.otel.trace_context import parse_traceparent, span_id_of
from addons.upstreams.bedrock_invoke import EventStreamToSSE
from addons.upstreams.bedrock_native import RelayTap
from addons.upstreams.direct import StreamTap
from addons.wire import anthropic, chat, converse, responses
from addons.wire.model import RequestInfo
from tests.fakes import upstream as fake
from tests.sse_replay import replay

T = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
KEY = "sk-ant-api03-CONFIGURED-SECRET-0000000000"
SETTINGS = Settings(instances=(
    Instance("anthropic", "anthropic", (KEY,), "https://api.anthropic.com", None, None, "indexed"),
    Instance("openai", "openai", (), "http://127.0.0.1:9999/v1", None, None, "indexed"),
))


class Harness:
    def __init__(self, content: bool = False, price: Any = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.pipeline = Pipeline(Resource.create({"service.name": "aigw"}), CountingBatchSpanProcessor(self.exporter),
                                 MeterProvider(metric_readers=[self.reader]))
        env = {CAPTURE_CONTENT: "true"} if content else {}
        self.sink = OtelSink(SETTINGS, FlowStates(), self.pipeline, price, environ=env)

    def flush(self) -> None:
        assert self.pipeline.hand_off.flush(10) and self.pipeline.spans is not None
        self.pipeline.spans.force_flush()

    def spans(self) -> list[ReadableSpan]:
        self.flush()
        return list(self.exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        self.flush()
        data = self.reader.get_metrics_data()
        assert data is not None
        return [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                if m.name == name for p in m.data.data_points]


def start(iid: str, *, provider: str = "anthropic", model: str = "claude-sonnet-4-5", stream: bool = True,
          session: str | None = None, correlating: str | None = None, traceparent: str | None = None,
          tracestate: str | None = None, route: str = "/v1/messages") -> InterceptionStart:
    return InterceptionStart(
        id=iid, initiator_id="u-1", api_key_id=None, provider=provider, provider_name=provider, model=model,
        client="Claude Code", client_session_id=session, credential_kind="centralized", credential_hint=None,
        started_at=T, metadata={"route": route, "method": "POST", "stream": stream},
        correlating_tool_call_id=correlating, traceparent=traceparent, tracestate=tracestate)


def end(iid: str, status: str = "completed", seconds: float = 2.0, **metadata: Any) -> InterceptionEnd:
    meta = {"http_status": 200, "response_id": "msg_1", "upstream_model": "claude-sonnet-4-5-20250929", **metadata}
    return InterceptionEnd(iid, T + timedelta(seconds=seconds), status, meta,
                           first_chunk_at=T + timedelta(seconds=0.25), finish_reasons=("tool_use",))


def usage(iid: str) -> TokenUsageRecord:
    return TokenUsageRecord(iid, "msg_1", 25, 12, 100, 7, {"reasoning_tokens": 3}, T, "anthropic", "claude-sonnet-4-5")


def tool(iid: str, call_id: str) -> ToolUsageRecord:
    return ToolUsageRecord(iid, "msg_1", call_id, "get_weather", '{"city": "' + KEY + '"}', None, False, None,
                           T + timedelta(seconds=2))


def test_one_client_span_per_interception_with_genai_attributes() -> None:
    h = Harness(price=lambda u: 0.0125)
    iid = str(uuid.uuid4())
    for record in (start(iid, session="sess-1"), PromptRecord(iid, "msg_1", "hello", T), usage(iid),
                   tool(iid, "toolu_1"), end(iid)):
        h.sink(record)
    [span] = h.spans()
    assert span.name == "chat claude-sonnet-4-5"
    assert span.kind is SpanKind.CLIENT
    assert span.context is not None
    assert span.context.span_id == uuid.UUID(iid).int & (2**64 - 1)
    assert span.context.trace_id == uuid.UUID(iid).int
    assert span.parent is None
    assert span.start_time == int(T.timestamp()) * 10**9
    assert span.end_time == span.start_time + 2 * 10**9
    a = dict(span.attributes or {})
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.model"] == "claude-sonnet-4-5"
    assert a["gen_ai.response.model"] == "claude-sonnet-4-5-20250929"
    assert a["gen_ai.response.id"] == "msg_1"
    assert a["gen_ai.response.finish_reasons"] == ("tool_use",)
    assert a["gen_ai.usage.input_tokens"] == 25 + 100 + 7  # the conventions count cached input too
    assert a["gen_ai.usage.output_tokens"] == 12
    assert a["gen_ai.usage.cache_read.input_tokens"] == 100
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 7
    assert a["gen_ai.usage.reasoning.output_tokens"] == 3
    assert a["gen_ai.conversation.id"] == "sess-1"
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.time_to_first_chunk"] == 0.25
    assert a["server.address"] == "api.anthropic.com" and a["server.port"] == 443
    assert a["aigw.instance"] == "anthropic" and a["aigw.client"] == "Claude Code"
    assert a["aigw.initiator"] == "u-1" and a["aigw.credential_kind"] == "centralized"
    assert a["aigw.cost_usd"] == 0.0125
    assert a["aigw.interception_id"] == iid
    assert "aigw.thread_root_id" not in a and "error.type" not in a
    assert span.status.status_code is StatusCode.UNSET
    [event] = span.events
    assert event.name == "gen_ai.tool.call"
    assert event.attributes is not None
    assert dict(event.attributes) == {"gen_ai.tool.name": "get_weather", "gen_ai.tool.call.id": "toolu_1",
                                      "gen_ai.tool.type": "function", "aigw.tool.injected": False}
    # Content is opt-in: neither the prompt nor the tool arguments by default.
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in a)
    assert h.sink.open == {}


def test_a_request_answering_a_tool_call_links_to_the_span_that_made_it() -> None:
    h = Harness()
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    for record in (start(first), usage(first), tool(first, "toolu_A"), end(first),
                   start(second, correlating="toolu_A"), tool(second, "toolu_B"), end(second),
                   start(third, correlating="toolu_B"), end(third)):
        h.sink(record)
    spans = {s.attributes["aigw.interception_id"]: s for s in h.spans() if s.attributes}
    a, b, c = spans[first], spans[second], spans[third]
    assert not a.links
    [link] = b.links
    assert link.context == a.context
    assert dict(link.attributes or {}) == {"aigw.relation": "thread_parent", "gen_ai.tool.call.id": "toolu_A"}
    assert c.links[0].context == b.context
    assert b.attributes is not None and c.attributes is not None
    assert (b.attributes["aigw.thread_parent_id"], b.attributes["aigw.thread_root_id"]) == (first, first)
    assert (c.attributes["aigw.thread_parent_id"], c.attributes["aigw.thread_root_id"]) == (second, first)
    # Without a client session id the aigw session is the thread's root, as in the database.
    assert b.attributes["gen_ai.conversation.id"] == c.attributes["gen_ai.conversation.id"] == first


def test_inbound_traceparent_makes_the_span_a_child_and_unsampled_callers_get_none() -> None:
    h = Harness()
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    iid, unsampled = str(uuid.uuid4()), str(uuid.uuid4())
    h.sink(start(iid, traceparent=f"00-{parent_trace}-{parent_span}-01", tracestate="vendor=x"))
    h.sink(end(iid))
    h.sink(start(unsampled, traceparent=f"00-{parent_trace}-{parent_span}-00"))
    h.sink(end(unsampled))
    [span] = h.spans()
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == int(parent_trace, 16)
    assert span.parent.span_id == int(parent_span, 16) and span.parent.is_remote
    assert span.context.span_id == span_id_of(iid)
    assert span.context.trace_state.to_header() == "vendor=x"
    assert h.points("gen_ai.client.operation.duration")[0].count == 2  # metrics count both


@pytest.mark.parametrize(("value", "expected"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
     (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", (0x4bf92f3577b34da6a3ce929d0e0e4736,
                                                                        0x00f067aa0ba902b7, 1)),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),
    ("garbage", None), ("", None), (None, None),
])
def test_traceparent_parsing(value: str | None, expected: tuple[int, int, int] | None) -> None:
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(("status", "metadata", "error_type"), [
    ("failed", {"http_status": 429, "error": "upstream answered HTTP 429: slow down"}, "429"),
    ("failed", {"http_status": None, "error": "connection refused"}, "connection_error"),
    ("failed", {"http_status": 200, "error": "stream ended before its final event"}, "response_error"),
    ("cancelled", {"http_status": 200, "error": "client disconnected"}, None),
])
def test_errors_set_status_and_error_type(status: str, metadata: dict[str, Any], error_type: str | None) -> None:
    h = Harness()
    iid = str(uuid.uuid4())
    h.sink(start(iid, stream=False))
    h.sink(end(iid, status, **metadata))
    [span] = h.spans()
    assert span.attributes is not None
    assert span.attributes.get("error.type") == error_type
    assert span.attributes["aigw.status"] == status
    if error_type is None:
        assert span.status.status_code is StatusCode.UNSET
    else:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == metadata["error"]
    [duration] = h.points("gen_ai.client.operation.duration")
    assert duration.attributes.get("error.type") == error_type
    assert not h.points("gen_ai.client.operation.time_to_first_chunk")  # not a stream


def test_content_only_when_enabled_and_scrubbed_of_configured_secrets() -> None:
    h = Harness(content=True)
    iid = str(uuid.uuid4())
    for record in (start(iid), PromptRecord(iid, "msg_1", f"my key is {KEY}", T),
                   ThoughtRecord(iid, "thinking it over", {"source": "thinking"}, T), tool(iid, "toolu_1"), end(iid)):
        h.sink(record)
    [span] = h.spans()
    assert span.attributes is not None
    assert orjson.loads(str(span.attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "my key is [REDACTED]"}]}]
    assert orjson.loads(str(span.attributes["gen_ai.output.messages"])) == [
        {"role": "assistant", "finish_reason": "tool_use", "parts": [
            {"type": "reasoning", "content": "thinking it over"},
            {"type": "tool_call", "id": "toolu_1", "name": "get_weather", "arguments": {"city": "[REDACTED]"}}]}]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["gen_ai.tool.call.arguments"] == '{"city": "[REDACTED]"}'
    assert KEY not in repr(span.to_json())


def test_genai_metrics() -> None:
    h = Harness()
    iid, other = str(uuid.uuid4()), str(uuid.uuid4())
    for record in (start(iid), usage(iid), end(iid), start(other, stream=False), end(other, seconds=1)):
        h.sink(record)
    tokens = {p.attributes["gen_ai.token.type"]: p for p in h.points("gen_ai.client.token.usage")}
    assert tokens["input"].sum == 132 and tokens["output"].sum == 12
    assert tokens["input"].attributes["gen_ai.provider.name"] == "anthropic"
    assert tokens["input"].attributes["gen_ai.request.model"] == "claude-sonnet-4-5"
    assert list(tokens["input"].explicit_bounds)[:3] == [1, 4, 16]
    [duration] = h.points("gen_ai.client.operation.duration")
    assert duration.count == 2 and duration.sum == 3.0
    assert list(duration.explicit_bounds)[:2] == [0.01, 0.02]
    [ttft] = h.points("gen_ai.client.operation.time_to_first_chunk")
    assert ttft.count == 1 and ttft.sum == 0.25


def test_openai_spans_name_the_api_and_the_server() -> None:
    h = Harness()
    iid = str(uuid.uuid4())
    h.sink(start(iid, provider="openai", model="gpt-5", route="/responses"))
    h.sink(end(iid))
    [span] = h.spans()
    assert span.attributes is not None
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert span.attributes["openai.api.type"] == "responses"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("127.0.0.1", 9999)


class BlockingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def test_a_full_export_queue_drops_and_counts_instead_of_waiting() -> None:
    exporter = BlockingExporter()
    processor = CountingBatchSpanProcessor(exporter, max_queue_size=2, max_export_batch_size=1,
                                           schedule_delay_millis=10)
    sink = OtelSink(SETTINGS, FlowStates(), Pipeline(Resource.create({}), processor, None), environ={})
    before = metrics.REGISTRY.get_sample_value("coder_aibridged_otel_dropped_spans_total") or 0.0
    n = 20
    for _ in range(n):  # the exporter is stuck: the sink must not be
        iid = str(uuid.uuid4())
        sink(start(iid))
        sink(end(iid))
    sink.pipeline.hand_off.flush(10)
    dropped = (metrics.REGISTRY.get_sample_value("coder_aibridged_otel_dropped_spans_total") or 0.0) - before
    assert dropped >= n - 3  # at most one span in export and two queued
    exporter.release.set()
    processor.shutdown()
    assert exporter.exported + dropped == n


def test_a_full_hand_off_queue_drops_and_counts_instead_of_waiting() -> None:
    hand_off = HandOff(size=2)
    release = threading.Event()
    started = threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(10)

    before = metrics.REGISTRY.get_sample_value("coder_aibridged_otel_dropped_spans_total") or 0.0
    hand_off.put(stuck)
    assert started.wait(10)
    ran: list[int] = []
    for i in range(5):  # two fit in the queue behind the stuck job; three are dropped
        hand_off.put(partial(ran.append, i))
    assert (metrics.REGISTRY.get_sample_value("coder_aibridged_otel_dropped_spans_total") or 0.0) - before == 3
    release.set()
    assert hand_off.flush(10)
    assert ran == [0, 1]
    hand_off.close(10)
    assert not hand_off.thread.is_alive()


def test_pipeline_from_the_standard_variables() -> None:
    pipeline = build_pipeline({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"})
    assert pipeline.spans is None and pipeline.meters is None
    assert pipeline.resource.attributes["service.name"] == "aigw"
    for env in ({"OTEL_TRACES_EXPORTER": "zipkin"}, {"OTEL_METRICS_EXPORTER": "prometheus"},
                {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}):
        with pytest.raises(OtelSetupError, match=next(iter(env))):
            build_pipeline(env)


def test_malformed_otlp_headers_stop_start_naming_the_variable_never_the_value(
        caplog: pytest.LogCaptureFixture) -> None:
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                 "OTEL_EXPORTER_OTLP_METRICS_HEADERS"):
        with pytest.raises(OtelSetupError) as e:
            build_pipeline({name: "x-tenant=acme, authorization: Bearer s3cr3t-collector-token"})
        assert str(e.value) == (f"{name} is not a comma-separated list of name=value pairs "
                                "(e.g. authorization=Bearer%20TOKEN); its value is not shown")
    assert "s3cr3t" not in caplog.text
    # What the exporters accept passes: URL-encoded, or a value with spaces (the SDK's liberal parsing).
    for value in ("authorization=Bearer%20s3cr3t", "Authorization = Bearer s3cr3t , x-tenant=acme", ""):
        pipeline = build_pipeline({"OTEL_EXPORTER_OTLP_HEADERS": value, "OTEL_TRACES_EXPORTER": "none",
                                   "OTEL_METRICS_EXPORTER": "none"})
        pipeline.shutdown()
    assert "s3cr3t" not in caplog.text


def test_shutdown_is_bounded_when_the_collector_never_answers(caplog: pytest.LogCaptureFixture) -> None:
    exporter = BlockingExporter()  # an export that would take 10 s (a collector holding the request)
    h = Harness()
    h.pipeline = Pipeline(Resource.create({}), CountingBatchSpanProcessor(exporter), h.pipeline.meters)
    h.sink.pipeline = h.pipeline
    iid = str(uuid.uuid4())
    h.sink(start(iid))
    h.sink(end(iid))
    h.pipeline.shutdown(budget=0.5)
    assert exporter.exported == 0  # returned while the export was still held
    assert ("OpenTelemetry: the collector did not take the last spans and measurements within 0.5 s; "
            "stopping without them") in caplog.text
    exporter.release.set()


def test_prometheus_time_to_first_token_and_cost() -> None:
    user = str(uuid.uuid4())
    iid = str(uuid.uuid4())
    sink = Metrics(FlowStates(), price=lambda u: 0.5)
    record = start(iid)
    record.initiator_id = user
    sink(record)
    sink(usage(iid))
    sink(end(iid))
    labels = {"provider": "anthropic", "model": "claude-sonnet-4-5"}
    assert metrics.REGISTRY.get_sample_value("coder_aibridged_cost_usd_total",
                                             {**labels, "initiator_id": user, "client": "Claude Code"}) == 0.5
    assert (metrics.REGISTRY.get_sample_value("coder_aibridged_time_to_first_token_seconds_bucket",
                                              {**labels, "le": "0.32"}) or 0) >= 1


def test_a_gateway_without_otel_loads_none_of_the_sdk() -> None:
    code = ("import sys, addons.cli, addons.app.serve; "
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'addons.sinks.otel'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("wire", "blocking", "events", "tools", "expected"), [
    ("anthropic", fake.anthropic_message, fake.anthropic_events, False, ["end_turn"]),
    ("anthropic", fake.anthropic_message, fake.anthropic_events, True, ["tool_use"]),
    ("chat", fake.chat_completion, fake.chat_chunks, False, ["stop"]),
    ("chat", fake.chat_completion, fake.chat_chunks, True, ["tool_calls"]),
    ("responses", fake.responses_body, fake.responses_events, False, ["completed"]),
])
def test_parsers_report_finish_reasons(wire: str, blocking: Any, events: Any, tools: bool,
                                       expected: list[str]) -> None:
    module = {"anthropic": anthropic, "chat": chat, "responses": responses}[wire]
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}], "input": "x"}
    if tools:
        body["tools"] = [{"name": "get_weather", "type": "function", "function": {"name": "get_weather"}}]
    assert module.parse_response(blocking(body)).finish_reasons == expected
    assert replay(module.StreamParser(), b"".join(events(body))).finish_reasons == expected


def test_every_stream_tap_stamps_the_first_chunk_once() -> None:
    def interception() -> Interception:
        return Interception(str(uuid.uuid4()), Api.MESSAGES, T, RequestInfo())

    taps: list[tuple[Interception, Any]] = []
    for make in (lambda i: StreamTap(anthropic.StreamParser(), False, i), lambda i: EventStreamToSSE(i),
                 lambda i: RelayTap(converse.InvokeStreamParser(), i)):
        i = interception()
        taps.append((i, make(i)))
    for i, tap in taps:
        assert i.first_chunk_at is None
        tap(b"event: ping\ndata: {}\n\n")
        first = i.first_chunk_at
        assert first is not None
        tap(b"event: ping\ndata: {}\n\n")
        assert i.first_chunk_at == first  # once, not per chunk


def test_provider_names_follow_the_conventions() -> None:
    bedrock = BedrockSettings(region="us-east-1", base_url=None, model="m", small_fast_model="s")
    on_bedrock = Instance("anthropic", "claude-aws", (), "https://api.anthropic.com", None, bedrock, "indexed")
    assert provider_name("anthropic", on_bedrock) == "aws.bedrock"
    assert server_of(on_bedrock) == ("bedrock-runtime.us-east-1.amazonaws.com", 443)
    assert provider_name("bedrock", None) == "aws.bedrock"  # Bedrock-native clients through the proxy
    assert provider_name("copilot", None) == "github_copilot"
    assert provider_name("openai", None) == "openai"
    assert server_of(None) is None


@pytest.mark.parametrize(("environ", "enabled"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "CODER_AIBRIDGE_OTEL": "false"}, False),
    ({"CODER_AIBRIDGE_OTEL": "true"}, True),
    ({"OTEL_SERVICE_NAME": "gw"}, False),  # naming the service exports nothing by itself
])
def test_export_is_switched_by_the_standard_variables_or_the_flag(environ: dict[str, str], enabled: bool) -> None:
    settings = loader.load(None, environ)
    assert settings.otel is enabled
    assert settings.otel_propagate_upstream is False
    assert loader.load(None, {**environ, "CODER_AIBRIDGE_OTEL_PROPAGATE_UPSTREAM": "true"}).otel_propagate_upstream
