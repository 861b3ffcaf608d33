"""The export pipeline: exporters and resource from the standard OTEL_* variables, the bounded hand-off
thread, the counting batch processor, and a stop bounded in time."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from queue import Full, Queue

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import Counter

from addons.sinks import metrics

log = logging.getLogger("aigw.otel")

DROPPED_SPANS = Counter(
    metrics.PREFIX + "otel_dropped_spans_total",
    "Interceptions not exported (span and measurements) because an OpenTelemetry queue was full.",
    registry=metrics.REGISTRY)

SHUTDOWN_SECONDS = 3.0  # the most stopping the export may add to a gateway's stop
# What the OTLP exporters accept in OTEL_EXPORTER_OTLP_*HEADERS (the SDK's "liberal" parsing: the
# specification's name=value list, values URL-encoded or with spaces). The SDK logs any other entry
# whole, a collector token included, and exports without it.
_HEADER_ENTRY = re.compile(r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*="
                           r"[ \t]*[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*[ \t]*")
_HEADER_DELIMITER = re.compile(r"[ \t]*,[ \t]*")


class OtelSetupError(Exception):
    """The OTEL_* variables ask for something aigw does not export (startup error)."""


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
