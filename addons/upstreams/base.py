"""How an instance's upstream request and response are shaped.

The Interceptor owns what every provider shares (authentication already done
by the router, interception records, the body size limit). What differs per
upstream — where the request goes, how it is authenticated, how the response
body reaches the client — is an `Upstream` strategy chosen per flow:

- the provider's own API (`direct.DirectUpstream`): point the request at
  the base URL, inject the provider key, tap SSE as it passes;
- Amazon Bedrock for Anthropic clients (`bedrock_invoke.BedrockUpstream`): rewrite
  to InvokeModel, SigV4 sign, convert the binary event stream to Anthropic
  SSE, translate AWS errors;
- Bedrock-native clients through the proxy (`bedrock_native.NativeBedrockUpstream`):
  relay byte-for-byte while decoding, re-sign when the gateway holds the key.

Strategies never touch the store; they put what should be recorded on the
interception (`metadata`, `token_metadata`, `parser`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.flow.state import FlowContext
    from addons.providers.errors import Refusal
    from addons.wire.model import RequestInfo, ResponseSummary


def client_left(flow: http.HTTPFlow, ctx: FlowContext) -> bool:
    """Whether a failed flow ended because the client went away, not the upstream: recorded as
    cancelled, and no verdict on the upstream for the circuit breaker.

    mitmproxy says "Client disconnected." for an HTTP/1 client and "stream reset by client (CANCEL)"
    for an HTTP/2 stream the client cancelled. It words an upstream's HTTP/2 reset the same way, so
    that reading is trusted only from a client that speaks HTTP/2."""
    if ctx.upstream_error is not None or flow.error is None:
        return False
    message = flow.error.msg.lower()
    return "client disconnected" in message or (
        message == "stream reset by client (cancel)" and flow.client_conn.alpn == b"h2")


class Upstream(Protocol):
    def read_request(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> RequestInfo:
        """What an intercepted request asks for (model, stream, prompt), before it is rewritten."""
        ...

    def read_response(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> ResponseSummary:
        """A blocking 2xx JSON body as the client received it."""
        ...

    def forward(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any] | None) -> Refusal | None:
        """`request` hook: send the flow to the upstream with the right credential.

        `body` is the parsed JSON of an intercepted route (already started as an
        interception), None for passthrough routes.
        """
        ...

    def response_headers(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        """`responseheaders` hook: choose how the body passes (set `flow.response.stream`
        and the interception's parser), or leave it buffered for `response`."""
        ...

    def response(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        """`response` hook, before records are built: reshape a buffered body (e.g. errors)."""
        ...
