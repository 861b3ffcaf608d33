"""The one place the addon chain is built: every addon constructed with the collaborators it needs, the
record sinks in one list, and the order of the chain (docs/ARCHITECTURE.md walks a request through it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from addons.app.http_layer import AigwHttpLayers
from addons.app.workers.link import ForwardAdmin, WorkerLink
from addons.app.workers.supervisor import Supervisor
from addons.chain.admin import AdminApi, KeyUsageFlusher
from addons.chain.analytics import RollupRefresher, SnapshotPublisher
from addons.chain.auth import KeyCache
from addons.chain.circuit import CircuitBreakers
from addons.chain.governance import Governance
from addons.chain.guard import DefaultDeny, Guard
from addons.chain.intercept import Interceptor
from addons.chain.limits import period_bounds
from addons.chain.proxy import proxy_addons
from addons.chain.retention import Retention
from addons.chain.routing import Router
from addons.chain.shutdown import GracefulShutdown
from addons.chain.timeouts import UpstreamTimeouts
from addons.chain.websocket import WebSocketRecorder
from addons.flow.records import Record
from addons.flow.state import FlowStates
from addons.pricing import Price
from addons.pricing.pricer import Pricer, usage_price
from addons.settings.config import Settings
from addons.sinks.dumps import Dumps
from addons.sinks.logs import Logs, StructuredLog
from addons.sinks.metrics import Metrics
from addons.sinks.recorder import Recorder
from addons.store import governance as governance_store
from addons.store import lake
from addons.upstreams.keypool import KeyFailover, KeyPools
from addons.upstreams.strategies import Upstreams

type Sink = Callable[[Record], None]


@dataclass(slots=True)
class Process:
    """One gateway process: the only one, the primary of several (`supervisor`), or a worker (`link`, which
    then stands in for the recorder and forwards admin calls to the primary, where the database is)."""

    settings: Settings
    recorder: Recorder | WorkerLink
    keys: KeyCache
    otel_pipeline: Any = None
    supervisor: Supervisor | None = None
    link: WorkerLink | None = None


@dataclass(slots=True)
class Chain:
    addons: list[object]  # in chain order
    shutdown: GracefulShutdown
    governance: Governance
    admin: AdminApi | None  # None in a worker
    upstreams: Upstreams


async def build_chain(process: Process, flows: FlowStates, proxyserver: Any, web_addons: list[object]) -> Chain:
    settings, recorder, keys = process.settings, process.recorder, process.keys
    pools = KeyPools()
    upstreams = Upstreams(settings, pools)
    interceptor = Interceptor(flows, recorder.record, upstreams.upstream_for)
    websocket = WebSocketRecorder(flows, interceptor)
    shutdown = GracefulShutdown(flows, interceptor, websocket, proxyserver)
    guard = Guard(settings, flows, interceptor.fail)
    # Governance, Prometheus and OTel price token rows as the writer does (rates cached per model).
    pricer = Pricer(settings.prices_file)
    price = usage_price(pricer)
    governance = await start_governance(settings, recorder, interceptor, flows, price,
                                        lambda provider, model: pricer.rates(provider, model) is not None)
    sinks = record_sinks(process, flows, governance, price)
    recorder.sinks.extend(sinks.records)
    admin, upkeep, retention = database_side(process, governance)
    addons: list[object] = [
        guard,  # first: refuses malformed requests; the engine's fail-closed path (addons/chain/guard.py)
        AigwHttpLayers(),  # marks proxied requests and bounds request bodies as mitmproxy parses them
        shutdown,  # refuses new requests while draining
        Logs(),
        *proxy_addons(settings, keys, flows),  # transparent proxy: before the gateway routes
        websocket,
        Router(settings, keys, flows, recorder.failing),
        admin if admin is not None else ForwardAdmin(recorder),
        interceptor,
        governance,  # right after the interceptor: a refusal is a failed interception, never an upstream failure
        *sinks.tracing,  # OTel: the traceparent derives from the interception id
        KeyFailover(flows, pools),
        # After the key failover (a 429 cools the key first) and before the timeouts (a refused request
        # is never watched); the timeouts' responseheaders wraps the stream tap the interceptor set.
        *([CircuitBreakers(settings.circuit_breaker, interceptor, flows)] if settings.circuit_breaker else []),
        UpstreamTimeouts(flows, proxyserver, settings.upstream_connect_timeout, settings.upstream_idle_timeout),
        *upkeep,
        upstreams,
        recorder,  # a worker's link: refuses new requests while its records wait (back-pressure)
        *sinks.metrics,
        *retention,
        *web_addons,
        DefaultDeny(guard),  # refuses what no addon chose an upstream for
        Dumps(settings, flows),  # last: dumps the request exactly as it goes upstream
    ]
    return Chain(addons, shutdown, governance, admin, upstreams)


async def start_governance(settings: Settings, recorder: Recorder | WorkerLink, interceptor: Interceptor,
                           flows: FlowStates, price: Price, priced: Callable[[str, str], bool]) -> Governance:
    """Limits and budgets, with the policy and this period's spend read from the database (off the loop); a
    worker has them from the primary, and follows its changes."""
    if isinstance(recorder, WorkerLink):
        return Governance(settings.governance, interceptor, flows, recorder.state["policy"],
                          dict(recorder.state["spend"]), price, priced)
    writer = recorder.writer
    assert writer is not None
    start, end = period_bounds(settings.governance.budget_period, datetime.now(UTC))
    policy = await asyncio.to_thread(writer.call, governance_store.load_policy)
    spend = await asyncio.to_thread(writer.call, lambda conn: governance_store.spend_by_user(conn, start, end))
    return Governance(settings.governance, interceptor, flows, policy, spend, price, priced)


class Sinks(NamedTuple):
    records: list[Sink]  # everything that consumes the records besides the database, in the order they get them
    tracing: list[object]  # of those, the addons that go right after the interceptor (OpenTelemetry)
    metrics: list[object]  # and the Prometheus addon


def record_sinks(process: Process, flows: FlowStates, governance: Governance, price: Price) -> Sinks:
    settings, writer = process.settings, getattr(process.recorder, "writer", None)
    sinks = Sinks([governance], [], [])
    if settings.prometheus_enable:
        metrics = Metrics(flows, (lambda: writer.queue_depth) if writer is not None else None, price)
        sinks.records.append(metrics)  # the writer's own hooks were chained when it opened
        sinks.metrics.append(metrics)
    if process.otel_pipeline is not None:
        from addons.sinks.otel.sink import OtelSink  # only here: a gateway without OTel loads none of the SDK
        from addons.sinks.otel.trace_context import PropagateUpstream

        otel = OtelSink(settings, flows, process.otel_pipeline, price)
        sinks.records.append(otel)
        sinks.tracing.append(otel)  # its request hook notes the credentials to scrub from the span
        if settings.otel_propagate_upstream:
            sinks.tracing.append(PropagateUpstream(flows))
    if settings.structured_logging:
        sinks.records.append(StructuredLog())
    return sinks


def database_side(process: Process,
                  governance: Governance) -> tuple[AdminApi | None, list[object], list[object]]:
    """The database's own addons run where the database is: the admin API; key usage, the snapshot and the
    rollup or the lake's upkeep; retention. A worker has none (it forwards admin calls to the primary)."""
    settings, recorder, keys = process.settings, process.recorder, process.keys
    if not isinstance(recorder, Recorder):
        return None, [], []
    assert recorder.writer is not None
    upkeep: list[object] = [KeyUsageFlusher(recorder, keys), SnapshotPublisher(settings, recorder)]
    lease = None
    if settings.lake is None:
        upkeep.append(RollupRefresher(recorder))  # this process is the only writer
    else:  # keys and limits reloaded every second; rollup, compaction and retention by the lease holder
        from addons.chain.replicas import LakeMaintenance, LakeSync

        holder = lake.replica_id(settings.home.path)
        upkeep += [LakeSync(recorder, keys, governance, holder), LakeMaintenance(recorder, holder)]
        lease = lambda conn, ttl: lake.take_lease(conn, "retention", holder, ttl)  # noqa: E731
    retention = Retention(settings.retention, recorder.writer, lease=lease)
    return AdminApi(settings, recorder, keys, governance), upkeep, [retention]
