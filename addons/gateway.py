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

from mitmproxy import exceptions, http, options
from mitmproxy.proxy.layers.http import _http1

from addons import ca, runtime
from addons.admin import AdminApi, KeyUsageFlusher
from addons.analytics import RollupRefresher, SnapshotPublisher
from addons.auth import KeyCache
from addons.bedrock import BedrockUpstreams
from addons.circuit import CircuitBreakers
from addons.config import Settings
from addons.dumps import Dumps
from addons.engine import AigwMaster, use_hook_table
from addons.governance import Governance
from addons.guard import DefaultDeny, Guard, install_request_body_limit
from addons.intercept import Interceptor
from addons.keypool import KeyFailover
from addons.limits import period_bounds
from addons.logs import Logs, LogSetupError, setup_logging
from addons.metrics import Metrics, MetricsServer, MetricsServerError, chain_on_batch, start_server
from addons.providers.base import any_error
from addons.proxy import install_absolute_form_marker, proxy_addons
from addons.recorder import Recorder
from addons.records import TokenUsageRecord
from addons.redaction import configured_secrets
from addons.retention import Retention
from addons.routing import Router
from addons.shutdown import GracefulShutdown
from addons.store import db
from addons.store import governance as governance_store
from addons.store import keys as keystore
from addons.store.prices import Pricer
from addons.timeouts import UpstreamTimeouts

log = logging.getLogger("aigw")


_PROTOCOL_ERROR_TYPES = {400: "invalid_request_error", 413: "request_too_large"}


def json_error_response(status_code: int, message: str = "") -> bytes:
    """mitmproxy answers upstream failures (refused, TLS, timeouts) with an HTML page
    and no hook can replace it; give clients JSON that both SDK families parse instead."""
    if status_code == 502:
        body = any_error(f"gateway could not reach the upstream: {message}", "api_error", "upstream_error")
    else:  # 400: unparseable request, 413: body over the limit (addons/guard.py)
        body = any_error(message, _PROTOCOL_ERROR_TYPES.get(status_code, "api_error"))
    response = http.Response.make(
        status_code,
        body,
        {"content-type": "application/json", "connection": "close"},
    )
    return _http1.http1.assemble_response(response)


def usage_price(pricer: Pricer) -> Callable[[TokenUsageRecord], float | None]:
    return lambda usage: pricer.cost(
        usage.provider, usage.model, usage.input_tokens, usage.output_tokens,
        usage.cache_read_input_tokens, usage.cache_write_input_tokens, usage.metadata)


def run_gateway(settings: Settings, *, sets: Sequence[str] = (), web: bool = False, quiet: bool = False) -> int:
    _http1.make_error_response = json_error_response  # see json_error_response
    install_absolute_form_marker()  # plain-HTTP proxy requests must be told from gateway routes
    install_request_body_limit()  # 413 while a request body arrives, before it is buffered whole
    # DuckDB re-creates its WAL at every checkpoint with the process umask; keep data owner-only.
    os.umask(0o077)
    # Startup errors (log file, locked database, metrics port) are one line on stderr, before serving.
    try:
        log_output = setup_logging(settings, "warn" if quiet else "info")
    except LogSetupError as e:
        print(f"aigw: {e}", file=sys.stderr)
        return 1
    for warning in settings.unknown_variables:
        log.warning(warning)
    if (busy := listen_error(settings.listen_host, settings.listen_port)) is not None:
        print(f"aigw: {busy}", file=sys.stderr)
        log_output.close()
        return 1
    recorder = Recorder(settings)
    metrics_server: MetricsServer | None = None
    otel_pipeline = None
    try:
        try:
            recorder.open()
        except db.DatabaseLockedError as e:
            print(f"aigw: {e}", file=sys.stderr)
            return 1
        assert recorder.writer is not None
        if settings.prometheus_enable:
            try:
                metrics_server = start_server(settings.prometheus_address)
            except MetricsServerError as e:
                print(f"aigw: {e}", file=sys.stderr)
                return 1
        if settings.otel:
            from addons import otel  # only here: a gateway without OTel loads none of the SDK

            try:
                otel_pipeline = otel.build_pipeline()
            except otel.OtelSetupError as e:
                print(f"aigw: {e}", file=sys.stderr)
                return 1
        keys = KeyCache(recorder.writer.call(keystore.load_keys))
        return asyncio.run(serve(settings, recorder, keys, sets=sets, web=web, quiet=quiet,
                                 otel_pipeline=otel_pipeline))
    except exceptions.OptionsError as e:  # a bad --set value
        print(f"aigw: {e}", file=sys.stderr)
        return 1
    finally:
        recorder.done()  # flushes every pending record
        if otel_pipeline is not None:
            otel_pipeline.shutdown()  # after the recorder: every span is built by now
        if metrics_server is not None:
            metrics_server.close()
        log_output.close()


async def start_governance(settings: Settings, recorder: Recorder, interceptor: Interceptor,
                           price: Callable[[TokenUsageRecord], float | None]) -> Governance:
    """Limits and budgets, with the policy and this period's spend read from the database (off the loop)."""
    writer = recorder.writer
    assert writer is not None
    start, end = period_bounds(settings.governance.budget_period, datetime.now(UTC))
    policy = await asyncio.to_thread(writer.call, governance_store.load_policy)
    spend = await asyncio.to_thread(writer.call, lambda conn: governance_store.spend_by_user(conn, start, end))
    return Governance(settings.governance, interceptor, policy, spend, price)


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


async def serve(settings: Settings, recorder: Recorder, keys: KeyCache, *, sets: Sequence[str], web: bool,
                quiet: bool, otel_pipeline: Any = None) -> int:
    opts = options.Options()
    # No termlog: addons/logs.py owns the log output (format and destination) for everything.
    web_addons: list[object] = []
    if web:
        from addons.web import AigwWebMaster, WebUi

        master: object = AigwWebMaster(opts, configured_secrets(settings))  # redacts what the UI receives
        use_hook_table(master)  # type: ignore[arg-type]
        web_addons.append(WebUi())
    else:
        master = AigwMaster(opts)
    # mitmproxy's bridge to the deprecated `add_log` hook formats every log record and
    # runs that hook through every addon on the loop; no addon here uses it, and it was
    # the largest single cost per request in scripts/bench (see BENCHMARKS.md).
    master._legacy_log_events.uninstall()  # type: ignore[attr-defined]
    bedrock = BedrockUpstreams(settings)
    interceptor = Interceptor(recorder.record, bedrock.upstream_for)
    shutdown = GracefulShutdown(interceptor)
    guard = Guard(settings, interceptor.fail)
    assert recorder.writer is not None
    metrics_addons: list[object] = []
    # The governance, Prometheus and OTel sinks price token rows as the writer does (rates cached per model).
    price = usage_price(Pricer(settings.prices_file))
    governance = await start_governance(settings, recorder, interceptor, price)
    recorder.sinks.append(governance)
    if settings.prometheus_enable:
        metrics_sink = Metrics(lambda: recorder.writer.queue_depth if recorder.writer else 0, price)
        recorder.sinks.append(metrics_sink)
        chain_on_batch(recorder.writer)
        metrics_addons.append(metrics_sink)
    otel_addons: list[object] = []
    if otel_pipeline is not None:
        from addons import otel

        recorder.sinks.append(otel.OtelSink(settings, otel_pipeline, price))
        if settings.otel_propagate_upstream:
            otel_addons.append(otel.PropagateUpstream())
    master.addons.add(  # type: ignore[attr-defined]
        guard,  # first: refuses malformed requests; the engine's fail-closed path (addons/guard.py)
        shutdown,  # refuses new requests while draining
        Logs(settings, recorder.sinks),
        *proxy_addons(settings, keys),  # transparent proxy: before the gateway routes
        Router(settings, keys),
        AdminApi(settings, recorder, keys, governance),
        interceptor,
        governance,  # right after the interceptor: a refusal is a failed interception, never an upstream failure
        *otel_addons,  # after the interceptor: the traceparent derives from the interception id
        KeyFailover(),
        # After the key failover (a 429 cools the key first) and before the timeouts (a refused request
        # is never watched); the timeouts' responseheaders wraps the stream tap the interceptor set.
        *([CircuitBreakers(settings.circuit_breaker, interceptor)] if settings.circuit_breaker else []),
        UpstreamTimeouts(settings.upstream_connect_timeout, settings.upstream_idle_timeout),
        KeyUsageFlusher(recorder, keys),
        SnapshotPublisher(settings, recorder),
        RollupRefresher(recorder),
        bedrock,
        recorder,
        *metrics_addons,
        Retention(settings.retention, recorder.writer),
        *web_addons,
        DefaultDeny(guard),  # refuses what no addon chose an upstream for
        Dumps(settings),  # last: dumps the request exactly as it goes upstream
    )
    # AWS credentials resolve on threads; wait for them (off the loop) before serving.
    await bedrock.start()
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
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.begin)  # drain in-flight requests, then stop
    url = f"http://{ca.reachable_address(settings.listen_host, settings.listen_port)}"
    runtime.write(settings.db, runtime.RunningGateway(url=url, pid=os.getpid(), token=keys.admin_token))
    log.info("aigw listening on %s (database %s)", url, settings.db)
    # Everything loaded so far (mitmproxy, DuckDB, botocore's models, prices) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise pause every stream.
    gc.collect()
    gc.freeze()
    try:
        await master.run()  # type: ignore[attr-defined]
    finally:
        runtime.remove(settings.db, os.getpid())
    return 0
