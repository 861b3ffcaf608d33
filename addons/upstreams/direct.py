"""Upstream strategy: the provider's own API.

The request goes to the instance's base URL with a provider key from the
instance's key pool (unless the client brought its own), in the header the
route's API expects (`Provider.put_key`); a streamed answer passes through
`StreamTap`, which decodes SSE incrementally, feeds the API's parser and hands
each chunk on unchanged (or, for Chat Completions where the gateway asked for
usage the client did not, without the extra usage chunk).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from mitmproxy import http

from addons.flow.state import FlowContext, Interception
from addons.providers.errors import Refusal
from addons.upstreams.keypool import KeyPools
from addons.wire import chat
from addons.wire.model import RequestInfo, ResponseSummary
from addons.wire.sse import SSEDecoder, SSEEvent, lone_block

log = logging.getLogger("aigw.intercept")

# Forcing include_usage adds this field to every chunk; the client would not have seen it.
USAGE_NULL = (b',"usage":null', b', "usage": null')


def _strip_usage_null(raw: bytes) -> bytes:
    return raw.replace(USAGE_NULL[0], b"").replace(USAGE_NULL[1], b"")


class StreamTap:
    """The callable set as `flow.response.stream`. Never raises."""

    __slots__ = ("decoder", "failed", "hide_usage", "parser", "timed")

    def __init__(self, parser: Any, hide_usage: bool, timed: Interception | None = None) -> None:
        self.decoder = SSEDecoder()
        self.parser = parser
        self.hide_usage = hide_usage
        self.failed = False
        self.timed = timed  # gets the first chunk's arrival time, then is dropped

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.timed is not None and chunk:
            self.timed.first_chunk_at = datetime.now(UTC)
            self.timed = None
        if self.failed:
            return chunk
        try:
            block = lone_block(chunk) if self.decoder.idle else None
            if block is None:
                events = self.decoder.feed(chunk) if chunk else self.decoder.close()
            elif self.parser.skips(*block):
                # Most chunks are one text delta: nothing to record, nothing to decode.
                return [_strip_usage_null(chunk)] if self.hide_usage else chunk
            else:  # what the decoder would return, without scanning the chunk again
                events = [SSEEvent(block[0], block[1].decode("utf-8", "replace"), chunk)]
            for event in events:
                if event.data is not None:
                    self.parser.on_event(event)
            if not self.hide_usage:
                return chunk
            out = b"".join(e.raw for e in events if not chat.is_usage_only_chunk(e))
            # An empty data chunk would end the client's chunked body early: send nothing instead.
            return [_strip_usage_null(out)] if out else []
        except Exception:
            # A parser bug must not break the client's stream: stop parsing, keep relaying.
            log.exception("stream tap failed; relaying the rest unparsed")
            self.failed = True
            return chunk


class DirectUpstream:
    """The provider's own API: base URL + provider key; SSE tapped as it passes."""

    def __init__(self, pools: KeyPools) -> None:
        self.pools = pools

    def read_request(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> RequestInfo:
        assert ctx.route.api is not None
        return ctx.provider.spec(ctx.route.api).parser.parse_request(body)

    def read_response(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> ResponseSummary:
        assert ctx.route.api is not None
        return ctx.provider.spec(ctx.route.api).parser.parse_response(body)

    def forward(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any] | None) -> Refusal | None:
        flow.request.url = ctx.instance.base_url + ctx.api_path + ctx.query
        if not ctx.byok and ctx.instance.keys:
            pool = self.pools.pool(ctx.instance)
            key = pool.pick()
            if key is None:
                retry_after = pool.retry_after()
                return Refusal(429, f"every provider key of instance {ctx.instance.name!r} is rate limited or "
                               f"refused; retry in {retry_after}s", "rate_limit_error",
                               {"retry-after": str(retry_after)})
            ctx.provider_key = key
            ctx.provider.put_key(flow.request.headers, ctx.route.api, key)
        if body is not None:
            # The tap must see plain bytes, not gzip/zstd.
            flow.request.headers["accept-encoding"] = "identity"
        return None

    def response_headers(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        assert flow.response is not None
        interception = ctx.interception
        if interception is None:
            flow.response.stream = True  # passthrough: relayed as it comes, never parsed
            return
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            interception.parser = ctx.provider.spec(interception.api).parser.StreamParser()
            flow.response.stream = StreamTap(interception.parser, interception.hide_usage, interception)
        # Anything else (blocking JSON, errors) is small and parsed whole in `response`.

    def response(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        pass
