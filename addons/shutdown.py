"""Addon: graceful shutdown on SIGTERM/SIGINT.

1. Stop accepting: the listeners close (mitmproxy's `server` option), and any
   new request on a connection that is still open (keep-alive, tunnels) gets
   503 with `Connection: close`; `/healthz` answers 503 too, so a load balancer
   stops sending traffic.
2. Drain: wait up to `aigw_shutdown_grace` seconds (default 30) for in-flight
   requests and streams to finish on their own.
3. What is still running then is ended and recorded as `cancelled` (with the
   tokens parsed so far), and the master shuts down. The recorder flushes
   every pending record in its `done` hook; the process exits 0.

A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from mitmproxy import ctx, exceptions, http

from addons import context
from addons.providers.base import any_error

log = logging.getLogger("aigw.shutdown")

DEFAULT_GRACE = 30.0
CANCEL_REASON = "gateway shut down before the response ended"


class GracefulShutdown:
    def __init__(self, interceptor: Any) -> None:
        self.interceptor = interceptor  # Interceptor: ends interceptions with its own record logic
        self.inflight: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self.draining = False
        self.idle: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_shutdown_grace", float, DEFAULT_GRACE,
                          "Seconds to let in-flight requests finish after SIGTERM/SIGINT before they are "
                          "ended (recorded as cancelled).")

    def configure(self, updated: set[str]) -> None:
        if "aigw_shutdown_grace" in updated and ctx.options.aigw_shutdown_grace < 0:
            raise exceptions.OptionsError("aigw_shutdown_grace must be >= 0 seconds")

    # -- tracking ------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.draining:
            flow.response = http.Response.make(
                503, any_error("the gateway is shutting down", "api_error", "overloaded_error"),
                {"content-type": "application/json", "connection": "close", "retry-after": "1"})
            return
        self.inflight.add(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.draining:
            flow.response = http.Response.make(503, b"the gateway is shutting down", {"connection": "close"})

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self.inflight.discard(flow)
        if self.draining and not self.inflight and self.idle is not None:
            self.idle.set()

    # -- shutting down -------------------------------------------------------------

    def begin(self) -> None:
        """The signal handler (runs on the event loop)."""
        if self.draining:
            log.warning("second signal: ending %d in-flight request(s) now", len(self.inflight))
            if self.task is not None:
                self.task.cancel()
            self.finish()
            return
        self.draining = True
        self.idle = asyncio.Event()
        if not self.inflight:
            self.idle.set()
        self.task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        grace = ctx.options.aigw_shutdown_grace
        log.info("shutting down: no new connections; waiting up to %.0fs for %d in-flight request(s)",
                 grace, len(self.inflight))
        try:
            ctx.options.update(server=False)  # close the listening sockets; open connections continue
        except Exception:
            log.exception("could not stop the listeners")
        assert self.idle is not None
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("grace period of %.0fs over: ending %d request(s) still in flight", grace,
                        len(self.inflight))
        self.finish()

    def finish(self) -> None:
        self.cancel_inflight(CANCEL_REASON)
        ctx.master.shutdown()

    def cancel_inflight(self, reason: str) -> int:
        """End every interception still running as cancelled; returns how many."""
        cancelled = 0
        for flow in list(self.inflight):
            flow_ctx = context.get(flow)
            interception = flow_ctx.interception if flow_ctx is not None else None
            if flow_ctx is None or interception is None or interception.ended:
                continue
            try:
                self.interceptor.finish(flow, flow_ctx, interception, "cancelled", reason)
                cancelled += 1
            except Exception:
                log.exception("could not record interception %s as cancelled", interception.id)
        if cancelled:
            log.warning("recorded %d interception(s) as cancelled: %s", cancelled, reason)
        return cancelled

    def done(self) -> None:
        # However the master stops (signal, startup error, crash in a hook), nothing stays open.
        self.cancel_inflight("gateway stopped before the response ended")
