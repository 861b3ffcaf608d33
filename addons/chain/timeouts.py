"""Addon: upstream connect and idle timeouts.

mitmproxy has neither: `asyncio.open_connection` waits as long as the kernel
does, and a silent upstream holds the client until `tcp_timeout` (600 s).

- **Connect** (TCP + TLS): `server_connect` runs inside the task that opens
  the connection, so that task is noted and cancelled at the deadline;
  mitmproxy then fails the flow as for a refused connection, answered with a
  504 naming the timeout and the instance (`gateway.json_error_response`).
- **Idle**: the longest the upstream may stay silent, before the response
  headers or between two body chunks. One watchdog task checks all in-flight
  flows a few times per timeout; the hot path only stamps `time.monotonic()`
  per chunk (`_Stamp`, wrapped around the stream tap). On expiry the gateway
  answers for the upstream: it hands HTTP response events to the flow's
  stream as if the upstream had sent them (`_Relay`: mitmproxy routes
  injected messages to a flow's stream, also inside CONNECT tunnels; it is
  the one way into a live stream from outside a hook):
  - before the headers: a 504 in the provider's error shape;
  - mid-stream: a final error event in the stream's own format (Anthropic
    `event: error`, OpenAI chat / Responses error chunks, a Bedrock event
    stream exception frame), then the end of the response;
  - where neither fits (HTTP/2 upstreams, whose streams cannot be addressed
    this way; bodies of unknown format): the server connection is closed.
  The flow's `upstream_error` ("upstream timeout after 300s") becomes the
  interception's error; the circuit breaker counts it as a failure.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import orjson
from mitmproxy import connection, http, tls
from mitmproxy.proxy import events, layer, server_hooks
from mitmproxy.proxy.layers.http import (
    HttpLayer,
    HttpStream,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
)
from mitmproxy.proxy.layers.http._base import HttpEvent

from addons.flow.state import FlowContext, FlowStates
from addons.providers.base import Api
from addons.providers.errors import anthropic_error, error_body, json_response, openai_error

log = logging.getLogger("aigw.timeouts")

# How the connect timeout's error starts (the interception's error, the client's 504 message).
CONNECT_TIMEOUT = "upstream connect timeout"
# How late a timeout may fire, as a share of the timeout (the watchdog's period), capped.
_CHECKS_PER_TIMEOUT = 4
_MAX_PERIOD = 1.0


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


class Phase(Enum):
    CONNECTING = "connecting"  # no established upstream connection yet (the connect timeout's turf)
    HEADERS = "headers"  # request sent, waiting for the response headers
    BODY = "body"  # a buffered (non-streamed) body arriving
    STREAM = "stream"  # a streamed body, stamped per chunk


class _Watch:
    __slots__ = ("ctx", "final", "fired", "flow", "last", "phase")

    def __init__(self, flow: http.HTTPFlow, ctx: FlowContext, now: float) -> None:
        self.flow = flow
        self.ctx = ctx
        self.last = now
        self.phase = Phase.CONNECTING
        self.fired = False
        self.final: bytes | None = None  # the injected last chunk, once fired mid-stream


class _Stamp:
    """Wraps `flow.response.stream`: notes each chunk's arrival, then hands it to the real tap.

    Once the watchdog has ended the stream, only its injected chunk passes (the
    tap never sees it: it is already in the client's format) and late upstream
    bytes are dropped."""

    __slots__ = ("inner", "watch")

    def __init__(self, inner: Callable[[bytes], Any] | None, watch: _Watch) -> None:
        self.inner = inner
        self.watch = watch

    def __call__(self, chunk: bytes) -> Any:
        watch = self.watch
        if watch.fired:
            if chunk is watch.final:
                return chunk
            return b"" if not chunk else []
        watch.last = time.monotonic()
        return chunk if self.inner is None else self.inner(chunk)


class _Relay(HttpEvent, events.MessageInjected):
    """Carries a response event to the flow's HTTP stream: as a MessageInjected, mitmproxy's HTTP
    layer routes it to the stream by flow; being no response event itself, a CONNECT tunnel's outer
    stream relays it untouched (it would turn ResponseData into bytes from the server)."""

    def __init__(self, flow: http.HTTPFlow, inner: HttpEvent) -> None:
        super().__init__(inner.stream_id)
        self.flow = flow
        self.message = None
        self.inner = inner


def _accept_relays(stream: HttpStream) -> None:
    """Make `stream` unwrap _Relay events (for the rest of its short life) and handle what they carry."""
    handle = stream._handle_event

    def unwrap(event: events.Event) -> layer.CommandGenerator[None]:
        return handle(event.inner if isinstance(event, _Relay) else event)

    stream._handle_event = unwrap  # type: ignore[method-assign]


def find_stream(top: Any, flow: http.HTTPFlow) -> HttpStream | None:
    """The HTTP stream handling `flow` in a connection's layer tree (tunnels nest HTTP layers)."""
    todo, seen = [top], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, HttpStream) and getattr(node, "flow", None) is flow:
            return node
        if isinstance(node, HttpLayer):
            todo.extend(node.streams.values())
        if isinstance(node, layer.NextLayer):
            todo.append(node.layer)
        todo.append(getattr(node, "child_layer", None))
        todo.append(getattr(getattr(node, "_handle_event", None), "__self__", None))  # mode layers delegate
    return None


class UpstreamTimeouts:
    def __init__(self, flows: FlowStates, proxyserver: Any, connect: float | None, idle: float | None) -> None:
        self.flows = flows
        self.proxyserver = proxyserver  # mitmproxy's: its live connections are what a connect timeout ends
        self.connect = connect
        self.idle = idle
        self.watches: dict[http.HTTPFlow, _Watch] = {}
        # Server connections being opened: deadline, their client, the task opening them.
        self.connecting: dict[connection.Server, tuple[float, connection.Client, asyncio.Task[Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        limits = [t for t in (connect, idle) if t]
        self.period = min([_MAX_PERIOD, *(t / _CHECKS_PER_TIMEOUT for t in limits)])

    # -- lifecycle ---------------------------------------------------------------

    def running(self) -> None:
        if (self.connect or self.idle) and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watchdog(), name="upstream timeouts")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- connect -----------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        task = asyncio.current_task()  # the task opening the connection (hooks run inline in it)
        if self.connect and task is not None:
            self.connecting[data.server] = (time.monotonic() + self.connect, data.client, task)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not data.server.tls:
            self.connecting.pop(data.server, None)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.connecting.pop(data.server, None)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.connecting.pop(data.server, None)

    def tls_established_server(self, data: tls.TlsData) -> None:
        self.connecting.pop(data.conn, None)  # type: ignore[arg-type]

    def tls_failed_server(self, data: tls.TlsData) -> None:
        self.connecting.pop(data.conn, None)  # type: ignore[arg-type]

    # -- flows -------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is not None and flow.response is None and (self.idle or self.connect):
            self.watches[flow] = _Watch(flow, ctx, time.monotonic())

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        watch = self.watches.get(flow)
        if watch is None or watch.fired or flow.response is None:
            return
        watch.last = time.monotonic()
        stream = flow.response.stream
        if stream:
            watch.phase = Phase.STREAM
            flow.response.stream = _Stamp(stream if callable(stream) else None, watch)
        else:
            watch.phase = Phase.BODY

    def response(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def _end(self, flow: http.HTTPFlow) -> None:
        watch = self.watches.pop(flow, None)
        if watch is not None and watch.fired:
            # The exchange was cut short: the upstream connection must not serve another request
            # (an HTTP/1 client's closes with it: the answer said `connection: close`).
            asyncio.get_running_loop().call_later(1.0, self._close_server, flow)

    # -- watchdog ----------------------------------------------------------------

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.check()
            except Exception:  # keep watching whatever one flow did
                log.exception("upstream timeout watchdog failed")

    async def check(self) -> None:
        now = time.monotonic()
        for server, (deadline, client, task) in list(self.connecting.items()):
            if deadline <= now:
                del self.connecting[server]
                self._connect_timeout(server, client, task)
        expired = []
        for flow in [f for f in self.watches if not f.live]:  # ended without response/error: never grows
            del self.watches[flow]
        for watch in self.watches.values():
            if watch.fired:
                continue
            if watch.phase is Phase.CONNECTING:
                server = watch.flow.server_conn
                if server.connected and (not server.tls or server.tls_established):
                    watch.phase, watch.last = Phase.HEADERS, now
                continue
            if self.idle and now - watch.last >= self.idle and not self._body_moving(watch, now):
                expired.append(watch)
        for watch in expired:
            await self._idle_timeout(watch)

    def _body_moving(self, watch: _Watch, now: float) -> bool:
        """A buffered body is not stamped per chunk: ask the connection when it last saw bytes."""
        if watch.phase is not Phase.BODY or (handler := self._handler(watch.flow)) is None:
            return False
        assert self.idle is not None
        silent = time.time() - handler.timeout_watchdog.last_activity
        if silent < self.idle:
            watch.last = now - silent
            return True
        return False

    def _connect_timeout(self, server: connection.Server, client: connection.Client, task: asyncio.Task[Any]) -> None:
        assert self.connect is not None
        error = f"{CONNECT_TIMEOUT} after {seconds_text(self.connect)}"
        instances: list[str] = []
        for watch in self.watches.values():
            request = watch.flow.request
            # An HTTP/2 client's streams to other upstreams wait on connections of their own.
            if (watch.flow.client_conn is client and watch.phase is Phase.CONNECTING
                    and (request.host, request.port) == server.address):
                watch.ctx.upstream_error = error
                watch.fired = True
                if watch.ctx.instance.name not in instances:
                    instances.append(watch.ctx.instance.name)
        address = f"{server.address[0]}:{server.address[1]}" if server.address else "the upstream"
        where = f"instance {', '.join(map(repr, instances))} at {address}" if instances else address
        log.warning("%s connecting to %s", error, where)
        # mitmproxy reports the cancellation's message as the connection error; the client's answer
        # (`gateway.json_error_response`) is a 504 for messages that start with CONNECT_TIMEOUT.
        task.cancel(f"{error}: {where} did not accept the connection")

    async def _idle_timeout(self, watch: _Watch) -> None:
        assert self.idle is not None
        watch.fired = True
        flow, ctx = watch.flow, watch.ctx
        limit = seconds_text(self.idle)
        ctx.upstream_error = f"upstream timeout after {limit}"
        log.warning("upstream timeout after %s: instance %r, %s %s (%s)", limit, ctx.instance.name,
                    flow.request.method, ctx.route.name, watch.phase.value)
        handler = self._handler(flow)
        if handler is None:
            return
        # HTTP/2 upstream streams cannot be addressed by injection (mitmproxy routes by HTTP/1 connection).
        injectable = flow.server_conn.alpn != b"h2"
        stream = find_stream(handler.layer, flow) if injectable else None
        if stream is not None and watch.phase is Phase.HEADERS:
            message = (f"upstream timeout after {limit}: instance {ctx.instance.name!r} sent no response "
                       f"headers within {limit}")
            body = error_body(ctx.instance.type, ctx.route.api, message, "timeout_error")
            answer = json_response(504, body, {"connection": "close"})
            await self._inject(handler, stream, flow, ResponseHeaders(stream.stream_id, answer, False),
                               ResponseData(stream.stream_id, body), ResponseEndOfMessage(stream.stream_id))
            return
        final = final_chunk(ctx, flow, f"upstream timeout after {limit}: instance {ctx.instance.name!r} sent "
                            f"nothing for {limit} in the middle of the response")
        if stream is not None and watch.phase is Phase.STREAM and final is not None and flow.response is not None:
            watch.final = final
            flow.response.headers["connection"] = "close"  # read when the response ends (HTTP/1 clients)
            await self._inject(handler, stream, flow, ResponseData(stream.stream_id, final),
                               ResponseEndOfMessage(stream.stream_id))
            return
        self._close_server(flow)  # mitmproxy fails the flow; ctx.upstream_error names why

    @staticmethod
    async def _inject(handler: Any, stream: HttpStream, flow: http.HTTPFlow, *inner: HttpEvent) -> None:
        """Hand `inner` to the flow's stream as if the upstream had sent them."""
        _accept_relays(stream)
        for event in inner:
            await handler.server_event(_Relay(flow, event))

    def _handler(self, flow: http.HTTPFlow) -> Any:
        connections = getattr(self.proxyserver, "connections", None)
        return connections.get(flow.client_conn.id) if connections is not None else None

    def _close_server(self, flow: http.HTTPFlow) -> None:
        handler = self._handler(flow)
        if handler is not None and flow.server_conn in handler.transports:
            with contextlib.suppress(KeyError, AssertionError):
                handler.close_connection(flow.server_conn)


def final_chunk(ctx: FlowContext, flow: http.HTTPFlow, message: str) -> bytes | None:
    """The last chunk of a stream that the gateway ends, in the stream's own format; None: unknown format."""
    if ctx.interception is None or flow.response is None:
        return None
    content_type = flow.response.headers.get("content-type", "")
    api = ctx.route.api
    if content_type.startswith("text/event-stream"):
        if api is Api.MESSAGES:
            return b"event: error\ndata: " + anthropic_error(message, "api_error") + b"\n\n"
        if api is Api.CHAT:
            return b"data: " + openai_error(message, "server_error", "upstream_timeout") + b"\n\n"
        if api is Api.RESPONSES:
            return b"event: error\ndata: " + orjson.dumps(
                {"type": "error", "code": "upstream_timeout", "message": message, "param": None}) + b"\n\n"
    if api is Api.BEDROCK and content_type.startswith("application/vnd.amazon.eventstream"):
        return eventstream_exception("modelTimeoutException", message)
    return None


def eventstream_exception(exception_type: str, message: str) -> bytes:
    """One AWS event-stream frame carrying an exception (what Bedrock sends when a stream fails)."""
    headers = b"".join(
        bytes([len(name)]) + name + b"\x07" + struct.pack(">H", len(value)) + value
        for name, value in ((b":message-type", b"exception"), (b":exception-type", exception_type.encode()),
                            (b":content-type", b"application/json")))
    payload = orjson.dumps({"message": message})
    prelude = struct.pack(">II", 12 + len(headers) + len(payload) + 4, len(headers))
    frame = prelude + struct.pack(">I", binascii.crc32(prelude)) + headers + payload
    return frame + struct.pack(">I", binascii.crc32(frame))
