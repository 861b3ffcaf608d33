"""W3C trace context: span and trace ids derived from the interception id, the client's `traceparent`
joined, and the gateway's own sent upstream."""

from __future__ import annotations

import re
import uuid

from mitmproxy import http
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from addons.flow.state import FlowStates

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_LOW64 = (1 << 64) - 1


def span_id_of(interception_id: str) -> int:
    return (uuid.UUID(interception_id).int & _LOW64) or 1


def trace_id_of(interception_id: str) -> int:
    return uuid.UUID(interception_id).int or 1


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C traceparent, else None."""
    m = _TRACEPARENT.fullmatch(value.strip().lower()) if value else None
    if m is None or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(m.group(4), 16)


def span_context(interception_id: str, inbound: str | None,
                 tracestate: str | None = None) -> tuple[SpanContext, SpanContext | None]:
    """The interception span's context, and its remote parent (the client's span) if it sent one."""
    parent = parse_traceparent(inbound)
    span_id = span_id_of(interception_id)
    if parent is None:
        return SpanContext(trace_id_of(interception_id), span_id, False, TraceFlags(TraceFlags.SAMPLED)), None
    trace_id, parent_span, flags = parent
    flags &= TraceFlags.SAMPLED  # parent-based sampling: an unsampled caller gets no span from us either
    state = TraceState.from_header([tracestate]) if tracestate else None
    remote = SpanContext(trace_id, parent_span, True, TraceFlags(flags), state)
    return SpanContext(trace_id, span_id, False, TraceFlags(flags), state), remote


def traceparent_of(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class PropagateUpstream:
    """Addon (--aibridge-otel-propagate-upstream): intercepted requests go upstream with the gateway's
    own traceparent (a child of the client's, if it sent one). Runs after the interceptor."""

    def __init__(self, flows: FlowStates) -> None:
        self.flows = flows

    def request(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is not None or ctx.interception is None or ctx.interception.ended:
            return
        span, _parent = span_context(ctx.interception.id, flow.request.headers.get("traceparent"))
        flow.request.headers["traceparent"] = traceparent_of(span)
