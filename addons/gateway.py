"""Build the master and the addon chain, and run it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from mitmproxy import http, options
from mitmproxy.proxy.layers.http import _http1

from addons import runtime
from addons.admin import AdminApi, KeyUsageFlusher
from addons.auth import KeyCache
from addons.config import Settings
from addons.intercept import Interceptor
from addons.providers.base import any_error
from addons.recorder import Recorder
from addons.routing import Router
from addons.store import db
from addons.store import keys as keystore

log = logging.getLogger("aigw")

CONFDIR = "./certs"


def json_error_response(status_code: int, message: str = "") -> bytes:
    """mitmproxy answers upstream failures (refused, TLS, timeouts) with an HTML page
    and no hook can replace it; give clients JSON that both SDK families parse instead."""
    response = http.Response.make(
        status_code,
        any_error(f"gateway could not reach the upstream: {message}" if status_code == 502 else message,
                  "api_error", "upstream_error"),
        {"content-type": "application/json", "connection": "close"},
    )
    return _http1.http1.assemble_response(response)


def run_gateway(settings: Settings, *, sets: Sequence[str] = (), web: bool = False, quiet: bool = False) -> int:
    _http1.make_error_response = json_error_response  # see json_error_response
    # DuckDB re-creates its WAL at every checkpoint with the process umask; keep data owner-only.
    os.umask(0o077)
    recorder = Recorder(settings)
    try:
        recorder.open()
    except db.DatabaseLockedError as e:
        print(f"aigw: {e}", file=sys.stderr)
        return 1
    assert recorder.writer is not None
    keys = KeyCache(recorder.writer.call(keystore.load_keys))
    try:
        return asyncio.run(serve(settings, recorder, keys, sets=sets, web=web, quiet=quiet))
    finally:
        recorder.done()


async def serve(settings: Settings, recorder: Recorder, keys: KeyCache, *, sets: Sequence[str], web: bool,
                quiet: bool) -> int:
    opts = options.Options()
    if web:
        from mitmproxy.tools.web.master import WebMaster

        master: object = WebMaster(opts, with_termlog=True)
    else:
        from mitmproxy.tools.dump import DumpMaster

        master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    master.addons.add(  # type: ignore[attr-defined]
        Router(settings, keys),
        AdminApi(recorder, keys),
        Interceptor(recorder.record),
        KeyUsageFlusher(recorder, keys),
        recorder,
    )
    opts.update(
        mode=[f"regular@{settings.listen_host}:{settings.listen_port}"],
        confdir=CONFDIR,
        connection_strategy="lazy",
        termlog_verbosity="warn" if quiet else "info",
    )
    if sets:
        opts.set(*sets)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)  # type: ignore[attr-defined]
    url = f"http://{settings.listen_host}:{settings.listen_port}"
    runtime.write(settings.db, runtime.RunningGateway(url=url, pid=os.getpid(), token=keys.admin_token))
    log.info("aigw listening on %s (database %s)", url, settings.db)
    try:
        await master.run()  # type: ignore[attr-defined]
    finally:
        runtime.remove(settings.db, os.getpid())
    return 0
