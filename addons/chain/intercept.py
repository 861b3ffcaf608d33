"""Addon: intercepted routes — parse the request, tap the response, record the result.

What differs per upstream (where the request goes, its credential, how the
response body passes and is parsed) is the flow's `Upstream` strategy
(addons/upstreams/); what differs per API (the request rewrite) is the
provider's (addons/providers/). The interception's start and its prompt are
recorded when the request is accepted; the rest is built at the end of the
flow — in `response` or `error`, whichever fires. Records go to the recorder,
which never blocks the loop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from mitmproxy import ctx as mitm_ctx
from mitmproxy import http

from addons.chain.guard import allow_upstream
from addons.flow import clients
from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    Record,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.flow.state import FlowContext, FlowStates, Interception
from addons.providers.errors import error_body, json_response
from addons.settings.masking import mask_secret
from addons.upstreams.base import Upstream, client_left
from addons.upstreams.direct import DirectUpstream
from addons.upstreams.keypool import KeyPools
from addons.wire.encoding import BodyError, decode_body
from addons.wire.model import RequestInfo, ResponseSummary

log = logging.getLogger("aigw.intercept")

MAX_BODY_DEFAULT = 32 * 1024 * 1024
class Interceptor:
    def __init__(self, flows: FlowStates, record: Callable[[Record], None],
                 upstream_for: Callable[[FlowContext], Upstream] | None = None) -> None:
        self.flows = flows
        self.record = record
        # Picks the upstream strategy for a flow (addons/upstreams/strategies.py); without it, the provider's API.
        direct = DirectUpstream(KeyPools())
        self.upstream: Callable[[FlowContext], Upstream] = upstream_for or (lambda ctx: direct)

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_max_body_size", int, MAX_BODY_DEFAULT,
                          "Largest request body (bytes) accepted on intercepted routes.")

    # -- request ---------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is not None or not ctx.route.intercepted:
            return
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > mitm_ctx.options.aigw_max_body_size:
            self.start(flow, ctx, RequestInfo(), None)
            self.reject(flow, ctx, 413, f"request body of {length} bytes exceeds the gateway's limit of "
                        f"{mitm_ctx.options.aigw_max_body_size}", "request_too_large")

    def request(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is not None:
            return
        upstream = self.upstream(ctx)
        if not ctx.route.intercepted:
            refusal = upstream.forward(flow, ctx, None)
            if refusal is not None:
                flow.response = json_response(refusal.status, error_body(  # in the shape of the route's API
                    ctx.provider.type, None, refusal.message, refusal.error_type), refusal.headers)
            else:
                allow_upstream(self.flows, flow)  # the upstream the strategy chose (chain/guard.py: default deny)
            return
        api = ctx.route.api
        assert api is not None
        try:
            body = self.parse_body(flow)
        except BodyError as e:
            self.start(flow, ctx, RequestInfo(), None)
            self.reject(flow, ctx, e.status, e.message, e.error_type)
            return
        if body is None:
            self.start(flow, ctx, RequestInfo(), None)
            self.reject(flow, ctx, 400, "request body is not a JSON object", "invalid_request_error")
            return
        info = upstream.read_request(flow, ctx, body)
        interception = self.start(flow, ctx, info, body)
        spec = ctx.provider.apis.get(api)
        if spec is not None and spec.rewrite is not None and spec.rewrite(body, info):
            flow.request.content = orjson.dumps(body)
            interception.hide_usage = True
        refusal = upstream.forward(flow, ctx, body)
        if refusal is not None:
            self.reject(flow, ctx, refusal.status, refusal.message, refusal.error_type, refusal.headers)
        else:
            allow_upstream(self.flows, flow)

    def parse_body(self, flow: http.HTTPFlow) -> dict[str, Any] | None:
        """The request's JSON object, None if it is none; BodyError for an encoding it cannot be read in."""
        raw = flow.request.raw_content or b""
        limit = mitm_ctx.options.aigw_max_body_size
        if len(raw) > limit:
            return None
        content = decode_body(raw, flow.request.headers.get("content-encoding", ""), limit)
        try:
            body = orjson.loads(content or b"")
        except (orjson.JSONDecodeError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def start(self, flow: http.HTTPFlow, ctx: FlowContext, info: RequestInfo,
              body: dict[str, Any] | None) -> Interception:
        assert ctx.route.api is not None
        now = datetime.now(UTC)
        interception = Interception(id=str(uuid.uuid4()), api=ctx.route.api, started_at=now, info=info)
        ctx.interception = interception
        headers = flow.request.headers
        who = clients.identify(headers, body)
        flow.metadata["aigw_interception_id"] = interception.id  # for people: mitmweb shows it on the flow
        metadata: dict[str, Any] = {
            "username": ctx.identity.user_name,
            "user_agent": _text(headers.get("user-agent")),
            "route": ctx.route.name,
            "method": flow.request.method,
            "stream": info.stream,
            "mode": ctx.mode,
        }
        if who.version:
            metadata["client_version"] = _text(who.version)
        credential = ctx.client_credential if ctx.byok else ctx.instance.key
        self.record(InterceptionStart(
            id=interception.id,
            initiator_id=ctx.identity.user_id,
            api_key_id=ctx.identity.key_id,
            provider=ctx.instance.type,
            provider_name=ctx.instance.name,
            model=info.model,
            client=who.client,
            client_session_id=_text(who.session_id),
            credential_kind="byok" if ctx.byok else "centralized",
            credential_hint=mask_secret(credential, tail=4) if credential else None,
            started_at=now,
            metadata=metadata,
            correlating_tool_call_id=info.correlating_tool_call_id,
            traceparent=_text(headers.get("traceparent")),
            tracestate=_text(headers.get("tracestate")),
        ))
        if info.prompt:  # now, not at the end: a crash mid-response keeps it (the end adds the response id)
            self.record(PromptRecord(interception.id, None, info.prompt, now))
        return interception

    def reject(self, flow: http.HTTPFlow, ctx: FlowContext, status: int, message: str, error_type: str,
               headers: dict[str, str] | None = None) -> None:
        flow.response = json_response(status, error_body(ctx.instance.type, ctx.route.api, message, error_type),
                                      headers)
        if ctx.interception is not None:
            self.finish(flow, ctx, ctx.interception, "failed", message)

    # -- response --------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is None:
            return
        if ctx.interception is not None and ctx.interception.ended:
            return
        self.upstream(ctx).response_headers(flow, ctx)

    def response(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or (ctx.interception is not None and ctx.interception.ended):
            return
        # Set when the gateway ended the response itself (addons/chain/timeouts.py), already in the client's shape.
        upstream_error = ctx.upstream_error
        if upstream_error is None:
            self.upstream(ctx).response(flow, ctx)
        if ctx.interception is None:
            return
        interception = ctx.interception
        assert flow.response is not None
        summary = interception.summary = self.summarise(flow, ctx, interception)
        status_code = flow.response.status_code
        error = None
        if upstream_error is not None:
            error = upstream_error
        elif status_code >= 400:
            error = f"upstream answered HTTP {status_code}"
            upstream_message = _error_message(flow.response.content if not flow.response.stream else None)
            if upstream_message:
                error += f": {upstream_message}"
        elif summary is not None and summary.error:
            error = summary.error
        elif summary is not None and not summary.complete:
            error = "stream ended before its final event"
        elif summary is None:
            error = "response could not be parsed"
        self.finish(flow, ctx, interception, "failed" if error else "completed", error)

    def fail(self, flow: http.HTTPFlow, message: str) -> None:
        """End the flow's interception as failed, if one was started and is still open (addons/chain/guard.py)."""
        ctx = self.flows.get(flow)
        if ctx is not None and ctx.interception is not None and not ctx.interception.ended:
            self.finish(flow, ctx, ctx.interception, "failed", message)

    def error(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is not None and ctx.interception is None and ctx.route.intercepted:
            # The request body never arrived whole (too large, client gone): still one interception row.
            self.start(flow, ctx, RequestInfo(), None)
        if ctx is None or ctx.interception is None or ctx.interception.ended:
            return
        interception = ctx.interception
        if interception.parser is not None:
            interception.summary = interception.parser.summary()
        upstream_error = ctx.upstream_error
        message = flow.error.msg if flow.error else "unknown error"
        if upstream_error is not None:
            message = upstream_error
        self.finish(flow, ctx, interception, "cancelled" if client_left(flow, ctx) else "failed", message)

    def summarise(self, flow: http.HTTPFlow, ctx: FlowContext,
                  interception: Interception) -> ResponseSummary | None:
        if interception.parser is not None:
            return interception.parser.summary()
        assert flow.response is not None
        if flow.response.status_code >= 400:
            return None
        try:
            body = orjson.loads(flow.response.get_content(strict=False) or b"")
        except (orjson.JSONDecodeError, ValueError):
            return None
        if not isinstance(body, dict):
            return None
        return self.upstream(ctx).read_response(flow, ctx, body)

    # -- records ---------------------------------------------------------------

    def finish(self, flow: http.HTTPFlow, ctx: FlowContext, interception: Interception, status: str,
               error: str | None) -> None:
        interception.ended = True
        now = datetime.now(UTC)
        summary = interception.summary
        if summary is None and interception.parser is not None:
            summary = interception.summary = interception.parser.summary()
        for rec in records_for(ctx, interception, summary, now):
            self.record(rec)
        metadata: dict[str, Any] = {"http_status": flow.response.status_code if flow.response else None}
        if error:
            metadata["error"] = error
        if summary is not None:
            if summary.response_id:
                metadata["response_id"] = summary.response_id
            if summary.model:
                metadata["upstream_model"] = summary.model
        metadata.update(interception.metadata)
        flow.metadata["aigw_status"] = status
        self.record(InterceptionEnd(id=interception.id, ended_at=now, status=status, metadata=metadata,
                                    first_chunk_at=interception.first_chunk_at,
                                    finish_reasons=tuple(summary.finish_reasons) if summary else ()))


def records_for(ctx: FlowContext, interception: Interception, summary: ResponseSummary | None,
                now: datetime) -> list[Record]:
    if summary is None:
        return []
    out: list[Record] = []
    iid = interception.id
    response_id = summary.response_id
    usage = summary.usage
    if usage is not None:
        out.append(TokenUsageRecord(
            interception_id=iid, provider_response_id=usage.provider_response_id or response_id,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_write_input_tokens=usage.cache_write_input_tokens,
            metadata={**usage.metadata, **interception.token_metadata}, created_at=now,
            provider=ctx.instance.type, model=interception.info.model or summary.model,
        ))
    for call in summary.tool_calls:
        out.append(ToolUsageRecord(
            interception_id=iid, provider_response_id=call.provider_response_id or response_id,
            provider_tool_call_id=call.call_id, tool=call.name, input=call.input,
            server_url=call.server_url, injected=call.injected, invocation_error=None,
            created_at=now, provider_item_id=call.item_id,
        ))
    for thought in summary.thoughts:
        out.append(ThoughtRecord(iid, thought.content, {"source": thought.source}, now))
    return out


def _text(value: str | None) -> str | None:
    """A header-derived string the writer can store: mitmproxy decodes header bytes with surrogateescape,
    and a lone surrogate would make the start record unwritable (the guard refuses such headers anyway)."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _error_message(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"][:500]
    # AWS errors (Bedrock-native clients get them as they are): {"message": ...} or {"Message": ...}.
    message = (parsed.get("message") or parsed.get("Message")) if isinstance(parsed, dict) else None
    return message[:500] if isinstance(message, str) else None
