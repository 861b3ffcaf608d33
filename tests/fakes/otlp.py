"""An OTLP/HTTP receiver on loopback: what a collector's `otlp` receiver on port 4318 gets.

It decodes the protobuf payloads of `POST /v1/traces` and `POST /v1/metrics` with the official
`opentelemetry-proto` messages and keeps them for the test. `delay` makes it a slow collector
(it answers each export only after sleeping).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.fakes.server import LoopbackServer, QuietHandler


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str  # hex
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str, dict[str, Any]]]  # (trace id, span id, attributes)
    resource: dict[str, Any]
    trace_state: str = ""


@dataclass
class ReceivedPoint:
    metric: str
    unit: str
    attributes: dict[str, Any]
    count: int
    sum: float
    bounds: list[float] = field(default_factory=list)


class OtlpReceiver(LoopbackServer):
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.spans: list[ReceivedSpan] = []
        self.points: list[ReceivedPoint] = []
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every export
        self.lock = threading.Lock()
        super().__init__(self._handler())

    def wait_spans(self, done: Any, timeout: float = 20) -> list[ReceivedSpan]:
        """The spans received so far, once `done(spans)` holds (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if done(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def wait_requests(self, done: Any, timeout: float = 20) -> bool:
        """Whether `done(requests)` held within the timeout (requests: (path, headers) of every export)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                requests = list(self.requests)
            if done(requests):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def wait_points(self, done: Any, timeout: float = 20) -> list[ReceivedPoint]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                points = list(self.points)
            if done(points) or time.monotonic() > deadline:
                return points
            time.sleep(0.05)

    def _traces(self, body: bytes) -> bytes:
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(ReceivedSpan(
                        name=s.name, kind=s.kind, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano, attributes=attributes(s.attributes),
                        status_code=s.status.code, status_message=s.status.message,
                        events=[(e.name, attributes(e.attributes)) for e in s.events],
                        links=[(lk.trace_id.hex(), lk.span_id.hex(), attributes(lk.attributes)) for lk in s.links],
                        resource=resource, trace_state=s.trace_state))
        with self.lock:
            self.spans.extend(spans)
        return ExportTraceServiceResponse().SerializeToString()

    def _metrics(self, body: bytes) -> bytes:
        request = ExportMetricsServiceRequest.FromString(body)
        points = []
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.WhichOneof("data") != "histogram":
                        continue
                    for p in m.histogram.data_points:
                        points.append(ReceivedPoint(m.name, m.unit, attributes(p.attributes), p.count, p.sum,
                                                    list(p.explicit_bounds)))
        with self.lock:
            self.points.extend(points)
        return ExportMetricsServiceResponse().SerializeToString()

    def _handler(self) -> type[QuietHandler]:
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                headers, body = self.read_request()
                encoding = headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with receiver.lock:
                    receiver.requests.append((self.path, headers))
                if receiver.delay:
                    time.sleep(receiver.delay)
                if self.path == "/v1/traces":
                    out = receiver._traces(body)
                elif self.path == "/v1/metrics":
                    out = receiver._metrics(body)
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/x-protobuf")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):  # the exporter gave up waiting (slow collector)
                    self.close_connection = True

        return Handler
