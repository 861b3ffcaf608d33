"""Addon: aigw's own HTTP layer, put in place of mitmproxy's through its `next_layer` hook.

What must happen while mitmproxy parses a request, before or instead of any hook, happens in
`AigwHttpStream`, the stream class of `AigwHttpLayer`:

- how a request arrived is marked on its flow (`flow.metadata[PROXIED]`, addons/flow/state.py)
  before any hook sees it: inside a CONNECT tunnel, or in absolute form (`GET http://host/p`, a
  plain-HTTP proxy request that mitmproxy rewrites to origin form before the first hook, after
  which it looks exactly like a gateway request). Proxied requests are authenticated as such.
- request bodies over `aigw_max_body_size` are refused with 413 while they arrive, chunked or not:
  mitmproxy buffers a request body whole before the `request` hook and checks only its own
  `body_size_limit`, which would also cut off large responses.
- a request an addon refused at its headers (401, 404, 400, …) is answered at once, without
  reading its body.

Client replays from the web UI build their own layers and do not pass through here; their body is
already in memory.
"""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import flow as mflow
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import (
    ErrorCode,
    HttpErrorHook,
    HttpLayer,
    HTTPMode,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpStream,
    RequestHeaders,
    ResponseProtocolError,
    SendHttp,
)

from addons.flow.state import ABSOLUTE_FORM, PROXIED, TUNNELLED


class AigwHttpStream(HttpStream):
    """One request/response exchange, as mitmproxy's, with aigw's marks and request limits."""

    def check_invalid(self, request: bool) -> layer.CommandGenerator[bool]:
        if request:
            # mitmproxy's first step for a new request, with the flow in place and the request line as
            # the client sent it: the one moment to mark how it arrived, before any hook runs.
            self.mark_arrival()
        return (yield from super().check_invalid(request))

    def mark_arrival(self) -> None:
        request = self.flow.request
        if any(isinstance(outer, HttpStream) for outer in self.context.layers[:-1]):
            self.flow.metadata[PROXIED] = TUNNELLED  # the stream of a CONNECT encloses this one
        elif (request.authority and request.method != "CONNECT" and self.mode is HTTPMode.regular
                and request.http_version.startswith("HTTP/1")):
            self.flow.metadata[PROXIED] = ABSOLUTE_FORM

    def state_wait_for_request_headers(self, event: RequestHeaders) -> layer.CommandGenerator[None]:
        yield from super().state_wait_for_request_headers(event)
        if (not event.end_stream and self.flow.response is not None
                and self.client_state == self.state_consume_request_body):
            yield from self.answer_before_body()

    def answer_before_body(self) -> layer.CommandGenerator[None]:
        # An addon refused the request in `requestheaders` while its body is still to come: mitmproxy
        # would buffer that body whole (up to the limit) before answering. Answer now; what still arrives
        # is read and dropped (the stream is gone), and HTTP/1 closes the connection after it.
        response = self.flow.response
        assert response is not None
        if not (self.flow.request.is_http2 or self.flow.request.is_http3):
            response.headers["connection"] = "close"
        self.client_state = self.state_errored
        yield HttpRequestHook(self.flow)
        if (yield from self.check_killed(True)):
            return
        response.timestamp_start = time.time()
        yield HttpResponseHeadersHook(self.flow)
        if (yield from self.check_killed(True)):
            return
        yield from self.send_response()
        yield from self.flow_done()

    def check_body_size(self, request: bool) -> layer.CommandGenerator[bool]:
        # Checked where mitmproxy checks its own limit: the declared Content-Length before any byte is
        # read, and the buffered size after each chunk (chunked bodies); at most the limit is ever held.
        if request and (yield from self.refuse_large_request()):
            return True
        return (yield from super().check_body_size(request))

    def refuse_large_request(self) -> layer.CommandGenerator[bool]:
        limit = getattr(self.context.options, "aigw_max_body_size", 0)
        if not limit:
            return False
        if self.request_body_buf:
            size: int | None = len(self.request_body_buf)
        else:
            try:
                size = expected_http_body_size(self.flow.request, None)
            except ValueError:
                size = None  # malformed Content-Length: mitmproxy's reader refuses it
        if size is None or size <= limit:
            return False
        if not self.request_body_buf:
            yield HttpRequestHeadersHook(self.flow)
        message = f"request body exceeds the gateway's limit of {limit} bytes"
        self.flow.error = mflow.Error(message)
        yield HttpErrorHook(self.flow)
        yield SendHttp(ResponseProtocolError(self.stream_id, message, ErrorCode.REQUEST_TOO_LARGE),
                       self.context.client)
        self.request_body_buf.clear()
        self.client_state = self.state_errored
        self.flow.live = False
        return True


class AigwHttpLayer(HttpLayer):
    """mitmproxy's HTTP layer, with aigw's streams."""

    def make_stream(self, stream_id: int) -> layer.CommandGenerator[None]:
        stream = self.streams[stream_id] = AigwHttpStream(self.context.fork(), stream_id)
        yield from self.event_to_child(stream, events.Start())


class AigwHttpLayers:
    """Addon: wherever mitmproxy's `next_layer` chose its HTTP layer, aigw's takes its place.

    Runs after mitmproxy's NextLayer (every built-in comes first in the chain), whose choice it keeps
    but for the HTTP layer's class: alone, or at the end of a stack (e.g. under the TLS layer of a
    client that speaks TLS to the listener).
    """

    name = "aigw_http_layers"

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        parent: Any = None
        chosen = nextlayer.layer
        while chosen is not None and not isinstance(chosen, HttpLayer):
            parent, chosen = chosen, getattr(chosen, "child_layer", None)
        if chosen is None or isinstance(chosen, AigwHttpLayer):
            return
        layers = chosen.context.layers  # the stack's layers share one context
        ours = AigwHttpLayer(chosen.context, chosen.mode)  # appends itself to the context's layers
        layers.remove(ours)
        layers[layers.index(chosen)] = ours
        if parent is None:
            nextlayer.layer = ours
        else:
            parent.child_layer = ours


__all__ = ["AigwHttpLayer", "AigwHttpLayers", "AigwHttpStream"]
