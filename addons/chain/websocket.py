"""Addon: record the Responses API over a WebSocket (Codex) like the SSE path.

Codex can open a WebSocket on `…/responses` instead of POSTing. The socket is
relayed untouched (mitmproxy parses the frames anyway); this addon reads the
messages as they pass: each client `{"type": "response.create", …}` (the same
top-level fields as a POST body) starts one interception, the server's Responses
events (the same JSON as the SSE `data:` lines) feed the same stream parser, and
the terminal event ends it — so the rows are exactly those of the SSE path. The
Interceptor writes them, with metadata `transport: websocket`.

Responses are taken in order: one socket runs one response at a time (a second
`response.create` before the first finished is queued behind it).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import weakref
from collections import deque
from typing import Any

import orjson
from mitmproxy import http, websocket

from addons.chain.intercept import Interceptor
from addons.chain.routing import WEBSOCKET_RESPONSES
from addons.flow.state import FlowContext, FlowStates
from addons.providers.base import Api, Route
from addons.upstreams.base import client_left
from addons.wire import responses
from addons.wire.sse import SSEEvent

log = logging.getLogger("aigw.websocket")

RESPONSES_ROUTE = Route(Api.RESPONSES, "/responses")  # recorded like the POST route
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
# Events are serialised with "type" first; reading it from the prefix lets the parser
# skip text deltas without decoding their JSON, as it does with SSE `event:` lines.
_LEADING_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.]+)"')
# Frames are held on the flow by mitmproxy; a long Codex session would keep every one.
KEEP_MESSAGES = 100


def create_payload(message: dict[str, Any]) -> dict[str, Any]:
    """The Responses request inside a `response.create` (flat, or wrapped in `response`)."""
    nested = message.get("response")
    if isinstance(nested, dict) and "input" not in message and "model" not in message:
        return nested
    return {k: v for k, v in message.items() if k != "type"}


def event_type(content: bytes) -> str | None:
    match = _LEADING_TYPE.match(content)
    if match is not None:
        return match.group(1).decode()
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


class WebSocketRecorder:
    def __init__(self, flows: FlowStates, interceptor: Interceptor) -> None:
        self.flows = flows
        self.interceptor = interceptor  # writes the rows, as for the SSE path
        # flow -> the interceptions still waiting for their terminal event, oldest first.
        self.open: weakref.WeakKeyDictionary[http.HTTPFlow, deque[FlowContext]] = weakref.WeakKeyDictionary()

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or ctx.route is not WEBSOCKET_RESPONSES or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        try:
            if message.is_text:
                if message.from_client:
                    self.client_message(flow, ctx, message)
                else:
                    self.server_message(flow, message)
        except Exception:
            # Recording must never break the relay.
            log.exception("websocket recorder failed on a message; relaying it unrecorded")
        if len(flow.websocket.messages) > 2 * KEEP_MESSAGES:
            del flow.websocket.messages[:-KEEP_MESSAGES]

    def client_message(self, flow: http.HTTPFlow, ctx: FlowContext, message: websocket.WebSocketMessage) -> None:
        if event_type(message.content) != "response.create":
            return
        parsed = orjson.loads(message.content)
        payload = create_payload(parsed)
        info = responses.parse_request(payload)
        info.stream = True  # WebSocket responses always stream
        sub = dataclasses.replace(ctx, route=RESPONSES_ROUTE, interception=None)
        interception = self.interceptor.start(flow, sub, info, payload)
        interception.parser = responses.StreamParser()
        interception.metadata["transport"] = "websocket"
        self.open.setdefault(flow, deque()).append(sub)

    def server_message(self, flow: http.HTTPFlow, message: websocket.WebSocketMessage) -> None:
        pending = self.open.get(flow)
        if not pending:
            return
        sub = pending[0]
        assert sub.interception is not None
        content = message.content
        kind = event_type(content)
        parser = sub.interception.parser
        if kind not in TERMINAL_EVENTS and parser.skips(kind, content):
            return  # a text delta: nothing to record, nothing to decode (as on the SSE path)
        parser.on_event(SSEEvent(event=kind, data=content.decode("utf-8", "replace"), raw=b""))
        if kind in TERMINAL_EVENTS:
            pending.popleft()
            self.finish(flow, sub, None)

    def finish(self, flow: http.HTTPFlow, sub: FlowContext, cut_short: tuple[str, str] | None) -> None:
        """Record the end of one response; `cut_short` = (status, why) when the socket ended first."""
        interception = sub.interception
        assert interception is not None
        if interception.ended:
            return
        summary = interception.summary = interception.parser.summary()
        if summary.error:
            status, error = "failed", summary.error
        elif summary.complete:
            status, error = "completed", None
        else:
            status, error = cut_short or ("failed", "websocket message stream ended before its final event")
        self.interceptor.finish(flow, sub, interception, status, error)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        pending = self.open.pop(flow, None)
        if not pending:
            return
        ws = flow.websocket
        if ws is not None and ws.closed_by_client:
            cut = ("cancelled", "client closed the websocket before the response completed")
        else:
            code = ws.close_code if ws is not None else None
            cut = ("failed", f"upstream closed the websocket before the response completed (code {code})")
        for sub in pending:
            self.finish(flow, sub, cut)

    def error(self, flow: http.HTTPFlow) -> None:
        pending = self.open.pop(flow, None)
        if not pending:
            return
        message = flow.error.msg if flow.error else "connection error"
        for sub in pending:
            self.finish(flow, sub, ("cancelled" if client_left(flow, sub) else "failed", message))
