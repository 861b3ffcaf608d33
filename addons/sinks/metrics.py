"""Prometheus metrics (prefix `coder_aibridged_`, names as Coder's AI Gateway).

The metric objects live at module level in their own registry, so any addon
can count without holding a reference to the Metrics addon, e.g. the proxy:

    from addons import metrics
    metrics.PROXY_CONNECTS.labels(type="mitm").inc()      # CONNECT decrypted
    metrics.PROXY_CONNECTS.labels(type="tunneled").inc()  # CONNECT relayed untouched
    metrics.PROXY_AUTH_FAILURES.inc()                     # answered 407

Interception metrics come from the recorder's records (the `Metrics` sink):
label values of an interception are kept in a small dict from its start
record to its end record. Everything is in memory and cheap; the exposition
HTTP server runs on its own thread (`--prometheus-address`).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

from mitmproxy import http
from mitmproxy import version as mitmproxy_version
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from addons import __version__
from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    Record,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.flow.state import FlowStates
from addons.pricing import Price

log = logging.getLogger("aigw.metrics")

PREFIX = "coder_aibridged_"
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    try:
        REGISTRY.register(_collector)
    except ValueError:  # pragma: no cover - already registered (module re-import)
        pass

UNKNOWN = "unknown"

INTERCEPTIONS = Counter(
    PREFIX + "interceptions_total", "Interceptions by outcome.",
    ["provider", "model", "status", "route", "method", "initiator_id", "client"], registry=REGISTRY)
INFLIGHT = Gauge(
    PREFIX + "interceptions_inflight", "Interceptions started and not yet ended.",
    ["provider", "model", "route"], registry=REGISTRY)
DURATION = Histogram(
    PREFIX + "interceptions_duration_seconds", "Time from the request to the end of the response.",
    ["provider", "model"], registry=REGISTRY,
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120))
TIME_TO_FIRST_TOKEN = Histogram(
    PREFIX + "time_to_first_token_seconds", "Time from the request to the first response chunk of a stream.",
    ["provider", "model"], registry=REGISTRY,
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92))
COST = Counter(
    PREFIX + "cost_usd_total", "Estimated cost of the recorded token usage, in US dollars (as in the database).",
    ["provider", "model", "initiator_id", "client"], registry=REGISTRY)
PASSTHROUGH = Counter(
    PREFIX + "passthrough_total", "Authenticated requests relayed without recording (models, count_tokens, …).",
    ["provider", "route", "method"], registry=REGISTRY)
PROMPTS = Counter(
    PREFIX + "prompts_total", "User prompts recorded.",
    ["provider", "model", "initiator_id", "client"], registry=REGISTRY)
TOKENS = Counter(
    PREFIX + "tokens_total", "Tokens by type (input excludes cached input).",
    ["provider", "model", "type", "initiator_id", "client"], registry=REGISTRY)
INJECTED_TOOLS = Counter(
    PREFIX + "injected_tool_invocations_total", "Invocations of gateway-injected tools.",
    ["provider", "model", "server", "name"], registry=REGISTRY)
NON_INJECTED_TOOLS = Counter(
    PREFIX + "non_injected_tool_selections_total", "Tool calls the model selected (client tools).",
    ["provider", "model", "name"], registry=REGISTRY)

PROXY_CONNECTS = Counter(
    PREFIX + "proxy_connect_sessions_total", "CONNECT tunnels: decrypted (mitm) or relayed untouched (tunneled).",
    ["type"], registry=REGISTRY)
PROXY_AUTH_FAILURES = Counter(
    PREFIX + "proxy_auth_failures_total", "Proxy requests refused with 407.", registry=REGISTRY)

CIRCUIT_BREAKER_STATE = Gauge(
    PREFIX + "circuit_breaker_state", "Circuit breaker state: 0 closed, 0.5 half-open, 1 open.",
    ["provider", "endpoint", "model"], registry=REGISTRY)
CIRCUIT_BREAKER_TRIPS = Counter(
    PREFIX + "circuit_breaker_trips_total", "Times a circuit breaker opened.",
    ["provider", "endpoint", "model"], registry=REGISTRY)
CIRCUIT_BREAKER_REJECTS = Counter(
    PREFIX + "circuit_breaker_rejects_total", "Requests refused by an open (or busy half-open) circuit breaker.",
    ["provider", "endpoint", "model"], registry=REGISTRY)

LIMIT_REJECTIONS = Counter(
    PREFIX + "limit_rejections_total",
    "Intercepted requests refused by a limit, budget or model allowlist (addons/chain/governance.py).",
    ["reason"], registry=REGISTRY)
INFLIGHT_REQUESTS = Gauge(
    PREFIX + "inflight_requests", "Intercepted requests admitted and not yet finished (max-concurrency counts these).",
    registry=REGISTRY)

RECORDER_QUEUE = Gauge(
    PREFIX + "recorder_queue_depth", "Records waiting for the database writer.", registry=REGISTRY)
RECORDER_WRITE = Histogram(
    PREFIX + "recorder_write_seconds", "Time to write one batch of records to the database.",
    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
RECORDER_ROWS = Counter(
    PREFIX + "recorder_records_written_total", "Records committed to the database.", registry=REGISTRY)
RECORDER_SPOOLED = Gauge(
    PREFIX + "recorder_spooled_records", "Records waiting in the on-disk spool while the database fails.",
    registry=REGISTRY)
RECORDER_WRITE_FAILURES = Counter(
    PREFIX + "recorder_write_failures_total", "Database writes that failed (the records went to the spool).",
    registry=REGISTRY)
RECORDER_DROPPED = Counter(
    PREFIX + "recorder_dropped_records_total",
    "Records lost: the spool could not be written, or the database refused the record (logged at ERROR).",
    registry=REGISTRY)
RETENTION_PURGED = Counter(
    PREFIX + "retention_purged_interceptions_total", "Interceptions deleted by retention.", registry=REGISTRY)
BUILD_INFO = Gauge(
    PREFIX + "build_info", "Always 1; the labels name the running aigw, mitmproxy and Python versions.",
    ["version", "mitmproxy_version", "python_version"], registry=REGISTRY)
BUILD_INFO.labels(version=__version__, mitmproxy_version=mitmproxy_version.VERSION,
                  python_version=platform.python_version()).set(1)

for _type in ("mitm", "tunneled"):
    PROXY_CONNECTS.labels(type=_type)

# Token fields that always get a series; integer metadata entries (reasoning_tokens, …) are added by name.
_TOKEN_TYPES = ("input", "output", "cache_read_input_tokens", "cache_write_input_tokens")
_MAX_EXTRA_TYPES = 32


class MetricsServerError(Exception):
    """The exposition endpoint cannot listen (startup error)."""


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise MetricsServerError(f"invalid --prometheus-address {address!r} (expected host:port)")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    def __init__(self, server: WSGIServer) -> None:
        self.server = server

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_server(address: str, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serve /metrics on `address` (host:port). Raises MetricsServerError with a clear message.

    `registry`: what to serve; with several workers, every worker's metrics summed
    (addons/app/workers/prometheus.py)."""
    host, port = parse_address(address)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise MetricsServerError(
            f"cannot serve Prometheus metrics on {host}:{port} (--prometheus-address / "
            f"CODER_PROMETHEUS_ADDRESS): {e.strerror or e}") from None
    return MetricsServer(server)


class _Open:
    __slots__ = ("client", "initiator", "method", "model", "provider", "route", "started_at")

    def __init__(self, r: InterceptionStart) -> None:
        self.provider = r.provider_name or r.provider or UNKNOWN
        self.model = r.model or UNKNOWN
        self.route = str(r.metadata.get("route") or UNKNOWN)
        self.method = str(r.metadata.get("method") or UNKNOWN)
        self.initiator = r.initiator_id or UNKNOWN
        self.client = r.client or "Unknown"
        self.started_at: datetime = r.started_at


class Metrics:
    """Addon and recorder sink: interception, token, prompt, tool and passthrough metrics."""

    MAX_OPEN = 100_000

    def __init__(self, flows: FlowStates, queue_depth: Callable[[], int] | None = None,
                 price: Price | None = None) -> None:
        self.flows = flows
        self.open: dict[str, _Open] = {}
        self.price = price
        self.extra_types: set[str] = set()
        # (metric, label values) -> child: `labels()` validates and locks on every call, and the
        # set of label values is bounded the same way the metric's own children are.
        self.children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        if queue_depth is not None:
            RECORDER_QUEUE.set_function(queue_depth)

    def child(self, metric: Any, *values: str) -> Any:
        key = (metric, values)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*values)
        return found

    # -- recorder sink -----------------------------------------------------------

    def __call__(self, record: Record) -> None:
        match record:
            case InterceptionStart():
                self.started(record)
            case InterceptionEnd():
                self.ended(record)
            case TokenUsageRecord():
                self.tokens(record)
            case PromptRecord():
                o = self.open.get(record.interception_id)
                if o is not None:
                    self.child(PROMPTS, o.provider, o.model, o.initiator, o.client).inc()
            case ToolUsageRecord():
                self.tool(record)

    def started(self, r: InterceptionStart) -> None:
        if len(self.open) >= self.MAX_OPEN:  # an end never came; do not grow without bound
            stale = self.open.pop(next(iter(self.open)))
            self.child(INFLIGHT, stale.provider, stale.model, stale.route).dec()
        o = self.open[r.id] = _Open(r)
        self.child(INFLIGHT, o.provider, o.model, o.route).inc()

    def ended(self, r: InterceptionEnd) -> None:
        o = self.open.pop(r.id, None)
        if o is None:
            return
        self.child(INFLIGHT, o.provider, o.model, o.route).dec()
        self.child(INTERCEPTIONS, o.provider, o.model, r.status, o.route, o.method, o.initiator, o.client).inc()
        self.child(DURATION, o.provider, o.model).observe(max(0.0, (r.ended_at - o.started_at).total_seconds()))
        if r.first_chunk_at is not None:
            self.child(TIME_TO_FIRST_TOKEN, o.provider, o.model).observe(
                max(0.0, (r.first_chunk_at - o.started_at).total_seconds()))

    def tokens(self, r: TokenUsageRecord) -> None:
        o = self.open.get(r.interception_id)
        if o is None:
            return
        model = o.model if o.model != UNKNOWN or not r.model else r.model
        values: dict[str, int] = {
            "input": r.input_tokens, "output": r.output_tokens,
            "cache_read_input_tokens": r.cache_read_input_tokens,
            "cache_write_input_tokens": r.cache_write_input_tokens,
        }
        for key, value in (r.metadata or {}).items():
            if isinstance(value, int) and not isinstance(value, bool) and self._extra_type(key):
                values[key] = value
        for token_type, value in values.items():
            if value > 0:
                self.child(TOKENS, o.provider, model, token_type, o.initiator, o.client).inc(value)
        if self.price is not None and (usd := self.price(r)):
            self.child(COST, o.provider, model, o.initiator, o.client).inc(usd)

    def _extra_type(self, key: str) -> bool:
        # Metadata keys come from provider responses: cap how many label values they can create.
        if key in self.extra_types:
            return True
        if key in _TOKEN_TYPES or len(self.extra_types) >= _MAX_EXTRA_TYPES:
            return False
        self.extra_types.add(key)
        return True

    def tool(self, r: ToolUsageRecord) -> None:
        o = self.open.get(r.interception_id)
        if o is None:
            return
        if r.injected:
            self.child(INJECTED_TOOLS, o.provider, o.model, r.server_url or UNKNOWN, r.tool).inc()
        else:
            self.child(NON_INJECTED_TOOLS, o.provider, o.model, r.tool).inc()

    # -- recorder writer hook (runs on the writer thread) ------------------------

    @staticmethod
    def on_batch(rows: int, seconds: float) -> None:
        RECORDER_ROWS.inc(rows)
        RECORDER_WRITE.observe(seconds)

    # -- mitmproxy hooks: passthrough routes produce no records -------------------

    def response(self, flow: http.HTTPFlow) -> None:
        self._passthrough(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._passthrough(flow)

    def _passthrough(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or ctx.route.intercepted or ctx.metrics_counted:
            return
        ctx.metrics_counted = True  # response and error can both fire
        self.child(PASSTHROUGH, ctx.instance.name, ctx.route.name, flow.request.method).inc()


def chain_on_batch(writer: Any) -> None:
    """Add Metrics.on_batch to the writer's batch hook, keeping any hook already set; count its
    failures, drops and spooled records."""
    writer.outage.on_failure = RECORDER_WRITE_FAILURES.inc
    writer.outage.on_dropped = RECORDER_DROPPED.inc
    RECORDER_SPOOLED.set_function(lambda: writer.outage.spooled)
    previous = writer.on_batch
    if previous is None:
        writer.on_batch = Metrics.on_batch
        return

    def both(rows: int, seconds: float) -> None:
        Metrics.on_batch(rows, seconds)
        previous(rows, seconds)

    writer.on_batch = both
