"""Build the master and the addon chain, and run it."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from mitmproxy import exceptions, options
from mitmproxy.proxy.layers.http import _http1

from addons.app import ca, runtime
from addons.app.engine import AigwMaster, use_hook_table
from addons.app.http_layer import AigwHttpLayers
from addons.app.workers.link import ForwardAdmin, WorkerLink
from addons.app.workers.process import loop_factory, name_otel_resource, tag_logs
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
from addons.chain.timeouts import CONNECT_TIMEOUT, UpstreamTimeouts
from addons.flow.records import TokenUsageRecord
from addons.flow.state import FlowStates
from addons.pricing.pricer import Pricer, usage_price
from addons.providers.errors import any_error, json_response
from addons.settings.config import Settings
from addons.settings.loader import PROPAGATE_WITHOUT_OTEL
from addons.sinks.dumps import Dumps
from addons.sinks.logs import Logs, LogSetupError, setup_logging
from addons.sinks.metrics import REGISTRY, Metrics, MetricsServer, MetricsServerError, chain_on_batch, start_server
from addons.sinks.recorder import Recorder
from addons.sinks.redaction import configured_secrets
from addons.store import db, lake
from addons.store import governance as governance_store
from addons.store import keys as keystore
from addons.upstreams.keypool import KeyFailover, KeyPools
from addons.upstreams.strategies import Upstreams

log = logging.getLogger("aigw")

WORKERS_STOP_TIMEOUT = 90.0  # seconds the primary waits for its workers to drain (their grace is 30 s)


_PROTOCOL_ERROR_TYPES = {400: "invalid_request_error", 413: "request_too_large"}


def json_error_response(status_code: int, message: str = "") -> bytes:
    """mitmproxy answers upstream failures (refused, TLS, timeouts) with an HTML page
    and no hook can replace it; give clients JSON that both SDK families parse instead."""
    if status_code == 502 and message.startswith(CONNECT_TIMEOUT):  # addons/chain/timeouts.py ended the connect
        status_code, body = 504, any_error(message, "timeout_error", "upstream_timeout")
    elif status_code == 502:
        body = any_error(f"gateway could not reach the upstream: {message}", "api_error", "upstream_error")
    else:  # 400: unparseable request, 413: body over the limit (addons/chain/guard.py)
        body = any_error(message, _PROTOCOL_ERROR_TYPES.get(status_code, "api_error"))
    return _http1.http1.assemble_response(json_response(status_code, body, {"connection": "close"}))


def prepare_process() -> None:
    """What every gateway process (the primary and each worker) sets up before mitmproxy starts."""
    _http1.make_error_response = json_error_response  # see json_error_response
    # DuckDB re-creates its WAL at every checkpoint with the process umask; keep data owner-only.
    os.umask(0o077)


def run_gateway(settings: Settings, *, sets: Sequence[str] = (), web: bool = False, quiet: bool = False) -> int:
    if web and settings.workers > 1:
        print("aigw: aigw web runs one process (its UI shows the flows of the process it runs in); "
              "use aigw serve --workers for several", file=sys.stderr)
        return 1
    prepare_process()
    # Startup errors (log file, locked database, metrics port) are one line on stderr, before serving.
    try:
        log_output = setup_logging(settings, "warn" if quiet else "info")
    except LogSetupError as e:
        print(f"aigw: {e}", file=sys.stderr)
        return 1
    if settings.workers > 1:
        tag_logs(log_output.handler, 0)
    for warning in settings.unknown_variables:
        log.warning(warning)
    if settings.otel_propagate_upstream and not settings.otel:
        log.warning(PROPAGATE_WITHOUT_OTEL)
    if (busy := listen_error(settings.listen_host, settings.listen_port)) is not None:
        print(f"aigw: {busy}", file=sys.stderr)
        log_output.close()
        return 1
    recorder = Recorder(settings)
    metrics_server: MetricsServer | None = None
    otel_pipeline = None
    supervisor: Supervisor | None = None
    try:
        try:
            # Metrics hooks before the writer starts: its startup replay's failures and drops count too.
            recorder.open(chain_on_batch if settings.prometheus_enable else None)
        except (db.DatabaseLockedError, lake.LakeError) as e:
            print(f"aigw: {e}", file=sys.stderr)
            return 1
        except (OSError, duckdb.Error) as e:  # e.g. a home that cannot be created, a file not ours
            print(f"aigw: cannot open the database {settings.db}: {getattr(e, 'strerror', None) or e} "
                  f"(home {settings.home.path}: {settings.home.reason})", file=sys.stderr)
            return 1
        assert recorder.writer is not None
        keys = KeyCache(recorder.writer.call(keystore.load_keys))
        if settings.workers > 1:
            supervisor = Supervisor(settings, list(sets), quiet, recorder, keys)
            recorder.worker = 0
        if settings.prometheus_enable:
            try:
                metrics_server = start_server(settings.prometheus_address,
                                              supervisor.registry() if supervisor else REGISTRY)
            except MetricsServerError as e:
                print(f"aigw: {e}", file=sys.stderr)
                return 1
        if settings.otel:
            # only here: a gateway without OTel loads none of the SDK
            from addons.sinks.otel.pipeline import OtelSetupError, build_pipeline

            if supervisor is not None:
                name_otel_resource(0)
            try:
                otel_pipeline = build_pipeline()
            except OtelSetupError as e:
                print(f"aigw: {e}", file=sys.stderr)
                return 1
        return asyncio.run(serve(settings, recorder, keys, sets=sets, web=web, quiet=quiet,
                                 otel_pipeline=otel_pipeline, supervisor=supervisor),
                           loop_factory=loop_factory(settings))
    except exceptions.OptionsError as e:  # a bad --set value
        print(f"aigw: {e}", file=sys.stderr)
        return 1
    finally:
        if supervisor is not None:
            supervisor.close(WORKERS_STOP_TIMEOUT)  # the workers' last records, before the recorder flushes
        recorder.done()  # flushes every pending record
        if otel_pipeline is not None:
            otel_pipeline.shutdown()  # after the recorder: every span is built by now
        if metrics_server is not None:
            metrics_server.close()
        log_output.close()


def run_worker(settings: Settings, sets: Sequence[str], worker: int, path: str, quiet: bool) -> int:
    """A worker process of `aigw serve --workers N` (addons/app/workers/): records through the primary."""
    prepare_process()
    try:
        log_output = setup_logging(settings, "warn" if quiet else "info")
    except LogSetupError as e:
        print(f"aigw: {e}", file=sys.stderr)
        return 1
    tag_logs(log_output.handler, worker)
    otel_pipeline = None
    try:
        if settings.otel:
            from addons.sinks.otel.pipeline import OtelSetupError, build_pipeline

            name_otel_resource(worker)
            try:
                otel_pipeline = build_pipeline()
            except OtelSetupError as e:
                print(f"aigw: {e}", file=sys.stderr)
                return 1
        return asyncio.run(serve_worker(settings, sets, worker, path, quiet, otel_pipeline),
                           loop_factory=loop_factory(settings))
    except exceptions.OptionsError as e:
        print(f"aigw: {e}", file=sys.stderr)
        return 1
    finally:
        if otel_pipeline is not None:
            otel_pipeline.shutdown()
        log_output.close()


async def serve_worker(settings: Settings, sets: Sequence[str], worker: int, path: str, quiet: bool,
                       otel_pipeline: Any) -> int:
    link = WorkerLink(worker, path)
    state = await link.connect()
    keys = KeyCache(state["keys"])
    keys.admin_token = state["token"]  # the one in the runtime file, for CLI calls a worker forwards
    try:
        return await serve(settings, link, keys, sets=sets, web=False, quiet=quiet, otel_pipeline=otel_pipeline,
                           link=link)
    finally:
        await link.close()  # the last records, after the drain


async def start_governance(settings: Settings, recorder: Recorder, interceptor: Interceptor, flows: FlowStates,
                           price: Callable[[TokenUsageRecord], float | None],
                           priced: Callable[[str, str], bool]) -> Governance:
    """Limits and budgets, with the policy and this period's spend read from the database (off the loop)."""
    writer = recorder.writer
    assert writer is not None
    start, end = period_bounds(settings.governance.budget_period, datetime.now(UTC))
    policy = await asyncio.to_thread(writer.call, governance_store.load_policy)
    spend = await asyncio.to_thread(writer.call, lambda conn: governance_store.spend_by_user(conn, start, end))
    return Governance(settings.governance, interceptor, flows, policy, spend, price, priced)


def replica_addons(settings: Settings, recorder: Recorder, keys: KeyCache, governance: Governance) -> list[object]:
    """On a DuckLake: keys and limits reloaded every second, rollup and compaction by the lease holder.
    Else the rollup refresher alone (this process is the only writer)."""
    if settings.lake is None:
        return [RollupRefresher(recorder)]
    from addons.chain.replicas import LakeMaintenance, LakeSync

    holder = lake.replica_id(settings.home.path)
    return [LakeSync(recorder, keys, governance, holder), LakeMaintenance(recorder, holder)]


def retention_lease(settings: Settings) -> Callable[[Any, float], bool] | None:
    """On a DuckLake, retention runs on the replica that holds its lease."""
    if settings.lake is None:
        return None
    holder = lake.replica_id(settings.home.path)
    return lambda conn, ttl: lake.take_lease(conn, "retention", holder, ttl)


def listen_error(host: str, port: int) -> str | None:
    """Why the listener cannot bind, checked before anything starts (mitmproxy only reports it after its
    start-up, in several lines); None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listener does
        try:
            s.bind((host, port))
        except OSError as e:
            return (f"cannot listen on {ca.reachable_address(host, port)}: {(e.strerror or str(e)).lower()} "
                    "(another gateway? stop it with aigw stop, or pick another --aibridge-listen)")
    return None


def check_choices(opts: options.Options, sets: Sequence[str]) -> None:
    """mitmproxy declares the valid values of some options but does not enforce them on --set."""
    for spec in sets:
        name = spec.partition("=")[0].strip()
        option = opts._options.get(name)
        if option is not None and option.choices and option.current() not in option.choices:
            raise exceptions.OptionsError(f"--set {spec}: invalid value {option.current()!r} for {name} "
                                          f"(expected one of {', '.join(option.choices)})")


async def serve(settings: Settings, recorder: Recorder | WorkerLink, keys: KeyCache, *,
                sets: Sequence[str], web: bool, quiet: bool, otel_pipeline: Any = None,
                supervisor: Supervisor | None = None, link: WorkerLink | None = None) -> int:
    """Run one gateway process: the only one, the primary of several (`supervisor`), or a worker (`link`,
    which then stands in for the recorder)."""
    flows = FlowStates()  # the per-flow state every addon below shares
    opts = options.Options()
    # No termlog: addons/sinks/logs.py owns the log output (format and destination) for everything.
    web_addons: list[object] = []
    if web:
        from addons.app.web import AigwWebMaster, WebUi

        master: object = AigwWebMaster(opts, configured_secrets(settings))  # redacts what the UI receives
        use_hook_table(master)  # type: ignore[arg-type]
        web_addons.append(WebUi(flows))
    else:
        master = AigwMaster(opts)
    # mitmproxy's bridge to the deprecated `add_log` hook formats every log record and
    # runs that hook through every addon on the loop; no addon here uses it, and it was
    # the largest single cost per request in scripts/bench (see BENCHMARKS.md).
    master._legacy_log_events.uninstall()  # type: ignore[attr-defined]
    pools = KeyPools()
    upstreams = Upstreams(settings, pools)
    interceptor = Interceptor(flows, recorder.record, upstreams.upstream_for)
    shutdown = GracefulShutdown(interceptor, flows)
    guard = Guard(settings, flows, interceptor.fail)
    metrics_addons: list[object] = []
    # The governance, Prometheus and OTel sinks price token rows as the writer does (rates cached per model).
    pricer = Pricer(settings.prices_file)
    price = usage_price(pricer)
    priced = lambda provider, model: pricer.rates(provider, model) is not None  # noqa: E731
    if isinstance(recorder, Recorder):
        governance = await start_governance(settings, recorder, interceptor, flows, price, priced)
    else:  # a worker: the policy and the period's spend come from the primary, and follow its changes
        governance = Governance(settings.governance, interceptor, flows, recorder.state["policy"],
                                dict(recorder.state["spend"]), price, priced)
    recorder.sinks.append(governance)
    if settings.prometheus_enable:
        writer = recorder.writer
        metrics_sink = Metrics(flows, (lambda: writer.queue_depth) if writer is not None else None, price)
        recorder.sinks.append(metrics_sink)  # the writer's hooks were chained when it opened
        metrics_addons.append(metrics_sink)
    otel_addons: list[object] = []
    if otel_pipeline is not None:
        from addons.sinks.otel.sink import OtelSink
        from addons.sinks.otel.trace_context import PropagateUpstream

        otel_sink = OtelSink(settings, flows, otel_pipeline, price)
        recorder.sinks.append(otel_sink)
        otel_addons.append(otel_sink)  # its request hook notes the request's credentials, to scrub from the span
        if settings.otel_propagate_upstream:
            otel_addons.append(PropagateUpstream(flows))
    # The database's own addons run where the database is; a worker forwards admin calls there.
    admin: AdminApi | None = None
    if isinstance(recorder, Recorder):
        assert recorder.writer is not None
        admin = AdminApi(settings, recorder, keys, governance)
        admin_addons: list[object] = [admin]
        database_addons: list[object] = [KeyUsageFlusher(recorder, keys), SnapshotPublisher(settings, recorder),
                                         *replica_addons(settings, recorder, keys, governance)]
        retention: list[object] = [Retention(settings.retention, recorder.writer,
                                             lease=retention_lease(settings))]
    else:
        admin_addons, database_addons, retention = [ForwardAdmin(recorder)], [], []
    master.addons.add(  # type: ignore[attr-defined]
        guard,  # first: refuses malformed requests; the engine's fail-closed path (addons/chain/guard.py)
        AigwHttpLayers(),  # marks proxied requests and bounds request bodies as mitmproxy parses them
        shutdown,  # refuses new requests while draining
        Logs(settings, recorder.sinks),
        *proxy_addons(settings, keys, flows),  # transparent proxy: before the gateway routes
        Router(settings, keys, flows),
        *admin_addons,
        interceptor,
        governance,  # right after the interceptor: a refusal is a failed interception, never an upstream failure
        *otel_addons,  # after the interceptor: the traceparent derives from the interception id
        KeyFailover(flows, pools),
        # After the key failover (a 429 cools the key first) and before the timeouts (a refused request
        # is never watched); the timeouts' responseheaders wraps the stream tap the interceptor set.
        *([CircuitBreakers(settings.circuit_breaker, interceptor, flows)] if settings.circuit_breaker else []),
        UpstreamTimeouts(flows, settings.upstream_connect_timeout, settings.upstream_idle_timeout),
        *database_addons,
        upstreams,
        recorder,  # a worker's link: refuses new requests while its records wait (back-pressure)
        *metrics_addons,
        *retention,
        *web_addons,
        DefaultDeny(guard),  # refuses what no addon chose an upstream for
        Dumps(settings, flows),  # last: dumps the request exactly as it goes upstream
    )
    # AWS credentials resolve on threads; wait for them (off the loop) before serving.
    await upstreams.start()
    opts.update(
        mode=[f"regular@{settings.listen_host}:{settings.listen_port}"],
        confdir=str(settings.home.certs_dir),  # --set confdir=… still wins
        connection_strategy="lazy",
        termlog_verbosity="warn" if quiet else "info",
        aigw_max_body_size=settings.max_body_size,
    )
    if sets:
        opts.set(*sets)
        check_choices(opts, sets)
    if isinstance(master, AigwMaster):
        master.drop_idle_builtins()
    ca.ensure_ca(Path(opts.confdir).expanduser(), opts.key_size)  # private key owner-only
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if supervisor is not None:
            supervisor.signal(signum)  # every worker drains too
        shutdown.begin()  # drain in-flight requests, then stop

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    url = f"http://{ca.reachable_address(settings.listen_host, settings.listen_port)}"
    if link is not None:
        link.attach(keys, governance, shutdown.begin)
        log.info("aigw worker %d listening on %s", link.worker, url)
    else:
        if supervisor is not None:
            assert admin is not None
            supervisor.start(admin, governance)
        runtime.write(settings.db, runtime.RunningGateway(url=url, pid=os.getpid(), token=keys.admin_token))
        log.info("aigw listening on %s (database %s%s)", url,
                 f"DuckLake {lake.describe(settings.lake)}" if settings.lake else settings.db,
                 f"; {settings.workers} workers" if supervisor is not None else "")
    # Everything loaded so far (mitmproxy, DuckDB, botocore's models, prices) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise pause every stream.
    gc.collect()
    gc.freeze()
    try:
        await master.run()  # type: ignore[attr-defined]
    finally:
        if link is None:
            runtime.remove(settings.db, os.getpid())
    return 0
