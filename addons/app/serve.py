"""Run a gateway process: the startup checks, the database, the mitmproxy master and its options, signals;
the addon chain itself comes from app/wiring.py."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
from mitmproxy import exceptions, options
from mitmproxy.proxy.layers.http import _http1

from addons.app import ca, runtime
from addons.app.collector import Collector
from addons.app.engine import AigwMaster, use_hook_table
from addons.app.wiring import Process, build_chain
from addons.app.workers.link import WorkerLink
from addons.app.workers.process import loop_factory, name_otel_resource, tag_logs
from addons.app.workers.supervisor import Supervisor
from addons.chain.auth import KeyCache
from addons.chain.timeouts import CONNECT_TIMEOUT
from addons.flow.state import FlowStates
from addons.providers.errors import any_error, json_response
from addons.settings.config import Settings
from addons.settings.loader import PROPAGATE_WITHOUT_OTEL
from addons.sinks.logs import LogOutput, LogSetupError, setup_logging
from addons.sinks.metrics import REGISTRY, MetricsServer, MetricsServerError, chain_on_batch, start_server
from addons.sinks.recorder import Recorder
from addons.sinks.redaction import configured_secrets
from addons.store import db, lake
from addons.store import keys as keystore

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


class StartupError(Exception):
    """Why the gateway cannot start, said in one line on stderr before anything serves."""


def says_startup_errors[**P](run: Callable[P, int]) -> Callable[P, int]:
    """A process entry point that answers a StartupError with its one line on stderr and exit code 1."""
    @functools.wraps(run)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return run(*args, **kwargs)
        except StartupError as e:
            print(f"aigw: {e}", file=sys.stderr)
            return 1

    return wrapper


def start_process(settings: Settings, quiet: bool) -> LogOutput:
    """What every gateway process (the primary and each worker) sets up before mitmproxy starts."""
    _http1.make_error_response = json_error_response  # see json_error_response
    # DuckDB re-creates its WAL at every checkpoint with the process umask; keep data owner-only.
    os.umask(0o077)
    try:
        return setup_logging(settings, "warn" if quiet else "info")
    except LogSetupError as e:
        raise StartupError(str(e)) from None


@says_startup_errors
def run_gateway(settings: Settings, *, sets: Sequence[str] = (), web: bool = False, quiet: bool = False) -> int:
    if web and settings.workers > 1:
        raise StartupError("aigw web runs one process (its UI shows the flows of the process it runs in); "
                           "use aigw serve --workers for several")
    log_output = start_process(settings, quiet)
    try:
        if settings.workers > 1:
            tag_logs(log_output.handler, 0)
        for warning in settings.unknown_variables:
            log.warning(warning)
        if settings.otel_propagate_upstream and not settings.otel:
            log.warning(PROPAGATE_WITHOUT_OTEL)
        return run_primary(settings, sets, web, quiet)
    finally:
        log_output.close()


def run_primary(settings: Settings, sets: Sequence[str], web: bool, quiet: bool) -> int:
    """The process that owns the database: open it, then serve (and supervise the workers, if any)."""
    if (busy := listen_error(settings.listen_host, settings.listen_port)) is not None:
        raise StartupError(busy)
    recorder = Recorder(settings)
    metrics_server: MetricsServer | None = None
    process: Process | None = None
    try:
        keys = open_database(settings, recorder)
        process = Process(settings, recorder, keys)
        if settings.workers > 1:
            process.supervisor = Supervisor(settings, list(sets), quiet, recorder, keys)
            recorder.worker = 0
        if settings.prometheus_enable:
            registry = process.supervisor.registry() if process.supervisor else REGISTRY
            try:
                metrics_server = start_server(settings.prometheus_address, registry)
            except MetricsServerError as e:
                raise StartupError(str(e)) from None
        process.otel_pipeline = otel_pipeline(settings, 0 if process.supervisor else None)
        return asyncio.run(serve(process, sets=sets, web=web, quiet=quiet), loop_factory=loop_factory(settings))
    except exceptions.OptionsError as e:  # a bad --set value
        raise StartupError(str(e)) from None
    finally:
        if process is not None and process.supervisor is not None:
            process.supervisor.close(WORKERS_STOP_TIMEOUT)  # the workers' last records, before the recorder flushes
        recorder.done()  # flushes every pending record
        if process is not None and process.otel_pipeline is not None:
            process.otel_pipeline.shutdown()  # after the recorder: every span is built by now
        if metrics_server is not None:
            metrics_server.close()


def open_database(settings: Settings, recorder: Recorder) -> KeyCache:
    """Open the database (its writer replays the spool and recovers a crash first); the gateway keys."""
    try:
        # Metrics hooks before the writer starts: its startup replay's failures and drops count too.
        recorder.open(chain_on_batch if settings.prometheus_enable else None)
    except (db.DatabaseLockedError, lake.LakeError) as e:
        raise StartupError(str(e)) from None
    except (OSError, duckdb.Error) as e:  # e.g. a home that cannot be created, a file not ours
        raise StartupError(f"cannot open the database {settings.db}: {getattr(e, 'strerror', None) or e} "
                           f"(home {settings.home.path}: {settings.home.reason})") from None
    assert recorder.writer is not None
    return KeyCache(recorder.writer.call(keystore.load_keys))


def otel_pipeline(settings: Settings, worker: int | None) -> Any:
    """The OpenTelemetry exporters, or None when OTel is off (then none of the SDK is even imported)."""
    if not settings.otel:
        return None
    from addons.sinks.otel.pipeline import OtelSetupError, build_pipeline

    if worker is not None:
        name_otel_resource(worker)
    try:
        return build_pipeline()
    except OtelSetupError as e:
        raise StartupError(str(e)) from None


@says_startup_errors
def run_worker(settings: Settings, sets: Sequence[str], worker: int, path: str, quiet: bool) -> int:
    """A worker process of `aigw serve --workers N` (addons/app/workers/): records through the primary."""
    log_output = start_process(settings, quiet)
    tag_logs(log_output.handler, worker)
    pipeline = None
    try:
        pipeline = otel_pipeline(settings, worker)
        return asyncio.run(serve_worker(settings, sets, worker, path, quiet, pipeline),
                           loop_factory=loop_factory(settings))
    except exceptions.OptionsError as e:
        raise StartupError(str(e)) from None
    finally:
        if pipeline is not None:
            pipeline.shutdown()
        log_output.close()


async def serve_worker(settings: Settings, sets: Sequence[str], worker: int, path: str, quiet: bool,
                       pipeline: Any) -> int:
    link = WorkerLink(worker, path)
    state = await link.connect()
    keys = KeyCache(state["keys"])
    keys.admin_token = state["token"]  # the one in the runtime file, for CLI calls a worker forwards
    try:
        return await serve(Process(settings, link, keys, pipeline, link=link), sets=sets, web=False, quiet=quiet)
    finally:
        await link.close()  # the last records, after the drain


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


def make_master(opts: options.Options, settings: Settings, web: bool, flows: FlowStates) -> tuple[Any, list[object]]:
    """mitmdump's engine, or mitmweb's with the UI's addon; without termlog (addons/sinks/logs.py owns
    the log output, format and destination, for everything)."""
    if not web:
        master: Any = AigwMaster(opts)
        web_addons: list[object] = []
    else:
        from addons.app.web.master import AigwWebMaster
        from addons.app.web.ui import WebUi

        master = AigwWebMaster(opts, configured_secrets(settings))  # redacts what the UI receives
        use_hook_table(master)
        web_addons = [WebUi(flows)]
    # mitmproxy's bridge to the deprecated `add_log` hook formats every log record and
    # runs that hook through every addon on the loop; no addon here uses it, and it was
    # the largest single cost per request in scripts/bench (see BENCHMARKS.md).
    master._legacy_log_events.uninstall()
    return master, web_addons


def set_options(opts: options.Options, settings: Settings, sets: Sequence[str], quiet: bool) -> None:
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


async def serve(process: Process, *, sets: Sequence[str], web: bool, quiet: bool) -> int:
    """Run one gateway process (see `Process`)."""
    settings, supervisor, link = process.settings, process.supervisor, process.link
    flows = FlowStates()  # the per-flow state every addon shares
    opts = options.Options()
    master, web_addons = make_master(opts, settings, web, flows)
    chain = await build_chain(process, flows, master.addons.get("proxyserver"), web_addons)
    master.addons.add(*chain.addons)
    await chain.upstreams.start()  # AWS credentials resolve on threads; wait for them (off the loop)
    set_options(opts, settings, sets, quiet)
    if isinstance(master, AigwMaster):
        master.drop_idle_builtins()
    ca.ensure_ca(Path(opts.confdir).expanduser(), opts.key_size)  # private key owner-only

    def on_signal(signum: int) -> None:
        if supervisor is not None:
            supervisor.signal(signum)  # every worker drains too
        chain.shutdown.begin()  # drain in-flight requests, then stop

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, on_signal, sig)
    url = f"http://{ca.reachable_address(settings.listen_host, settings.listen_port)}"
    if link is not None:
        link.attach(process.keys, chain.governance, chain.shutdown.begin)
        log.info("aigw worker %d listening on %s", link.worker, url)
    else:
        if supervisor is not None:
            assert chain.admin is not None
            supervisor.start(chain.admin, chain.governance)
        runtime.write(settings.db, runtime.RunningGateway(url=url, pid=os.getpid(), token=process.keys.admin_token))
        log.info("aigw listening on %s (database %s%s)", url,
                 f"DuckLake {lake.describe(settings.lake)}" if settings.lake else settings.db,
                 f"; {settings.workers} workers" if supervisor is not None else "")
    collector = Collector(chain.shutdown.busy)  # full passes between requests, not mid-stream
    collector.start()
    try:
        await master.run()
    finally:
        collector.stop()
        if link is None:
            runtime.remove(settings.db, os.getpid())
    return 0
