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
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http

from addons.flow.state import FlowStates
from addons.providers.errors import any_error, json_response
from addons.settings.durations import option_seconds

if TYPE_CHECKING:
    from addons.chain.intercept import Interceptor
    from addons.chain.websocket import WebSocketRecorder

log = logging.getLogger("aigw.shutdown")

DEFAULT_GRACE = 30.0
CANCEL_REASON = "gateway shut down before the response ended"
POLL = 0.05  # seconds between checks while draining


class GracefulShutdown:
    def __init__(self, flows: FlowStates, interceptor: Interceptor, websocket: WebSocketRecorder,
                 proxyserver: Any) -> None:
        self.flows = flows
        self.interceptor = interceptor  # ends interceptions with its own record logic
        self.websocket = websocket  # its responses still streaming are in flight too
        self.proxyserver = proxyserver  # mitmproxy's: the client connections to close at the end
        self.inflight: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self.draining = False
        self.task: asyncio.Task[None] | None = None
        self.grace = DEFAULT_GRACE

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_shutdown_grace", str, "30s",
                          "How long in-flight requests may run on after SIGTERM/SIGINT before they are ended "
                          "(and recorded as cancelled), e.g. 30s, 2m; 0 ends them at once.")

    def configure(self, updated: set[str]) -> None:
        if "aigw_shutdown_grace" in updated:
            self.grace = option_seconds(ctx.options.aigw_shutdown_grace, "aigw_shutdown_grace", allow_zero=True)

    # -- tracking ------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.draining:
            flow.response = json_response(
                503, any_error("the gateway is shutting down", "api_error", "overloaded_error"),
                {"connection": "close", "retry-after": "1"})
            return
        self.inflight.add(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.draining:
            flow.response = http.Response.make(503, b"the gateway is shutting down", {"connection": "close"})

    def response(self, flow: http.HTTPFlow) -> None:
        self.inflight.discard(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.inflight.discard(flow)

    # -- websockets (Codex Responses over WebSocket): in flight while a response is pending ----------

    def _websocket_pending(self) -> dict[http.HTTPFlow, Any]:
        """flow -> responses still streaming over a WebSocket."""
        return {f: subs for f, subs in list(self.websocket.open.items()) if subs}

    def busy(self) -> int:
        return len(self.inflight) + sum(len(subs) for subs in self._websocket_pending().values())

    # -- shutting down -------------------------------------------------------------

    def begin(self) -> None:
        """The signal handler (runs on the event loop)."""
        if self.draining:
            log.warning("second signal: ending %d in-flight request(s) now", self.busy())
            if self.task is not None:
                self.task.cancel()
            self.task = asyncio.get_running_loop().create_task(self.stop())
            return
        self.draining = True
        self.task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        grace = self.grace
        log.info("shutting down: no new connections; waiting up to %.0fs for %d in-flight request(s)",
                 grace, self.busy())
        try:
            ctx.options.update(server=False)  # close the listening sockets; open connections continue
        except Exception:
            log.exception("could not stop the listeners")
        deadline = asyncio.get_running_loop().time() + grace
        while self.busy() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(POLL)
        if self.busy():
            log.warning("grace period of %.0fs over: ending %d request(s) still in flight", grace, self.busy())
        await self.stop()

    async def stop(self) -> None:
        self.cancel_inflight(CANCEL_REASON)
        await self.close_connections()
        ctx.master.shutdown()

    async def close_connections(self, timeout: float = 2.0) -> None:
        """End the remaining client connections (idle keep-alive, cut streams) before the loop stops.

        Ending each connection's handler lets mitmproxy close it normally; connections still open when
        the event loop is torn down would be cancelled mid-flight and logged as errors.
        """
        connections = getattr(self.proxyserver, "connections", None)
        if not connections:
            return
        for handler in list(connections.values()):
            try:
                io = handler.transports.get(handler.client)
                if io is not None and io.handler is not None:
                    io.handler.cancel("gateway shutting down")
            except Exception:
                log.debug("could not close a client connection", exc_info=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while connections and loop.time() < deadline:
            await asyncio.sleep(POLL)

    def cancel_inflight(self, reason: str) -> int:
        """End every interception still running as cancelled (tokens so far included); returns how many."""
        cancelled = 0
        for flow in list(self.inflight):
            flow_ctx = self.flows.get(flow)
            interception = flow_ctx.interception if flow_ctx is not None else None
            if flow_ctx is None or interception is None or interception.ended:
                continue
            cancelled += self._cancel(interception.id, self.interceptor.finish, flow, flow_ctx, interception,
                                      "cancelled", reason)
        for flow, subs in self._websocket_pending().items():
            while subs:
                sub = subs.popleft()
                cancelled += self._cancel(getattr(sub.interception, "id", "?"), self.websocket.finish, flow, sub,
                                          ("cancelled", reason))
        if cancelled:
            log.warning("recorded %d interception(s) as cancelled: %s", cancelled, reason)
        return cancelled

    @staticmethod
    def _cancel(interception_id: str, end: Any, *args: Any) -> int:
        try:
            end(*args)
        except Exception:
            log.exception("could not record interception %s as cancelled", interception_id)
            return 0
        return 1

    def done(self) -> None:
        # However the master stops (signal, startup error, crash in a hook), nothing stays open.
        self.cancel_inflight("gateway stopped before the response ended")
