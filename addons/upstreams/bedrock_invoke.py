"""Upstream strategy: Anthropic Messages clients served from Amazon Bedrock's InvokeModel API.

An `anthropic` instance with Bedrock settings keeps speaking the Anthropic
Messages API to its clients while the gateway talks InvokeModel to Bedrock:

- `POST /v1/messages` becomes `POST /model/{id}/invoke` or
  `/invoke-with-response-stream` (`build_invoke_request`), SigV4-signed with
  the instance's AWS credentials over the exact bytes sent;
- the binary event stream is converted to Anthropic SSE chunk by chunk in the
  stream tap (`EventStreamToSSE`) while the Anthropic stream parser reads the
  same events; blocking JSON is already an Anthropic Message;
- AWS error bodies become Anthropic error bodies (status and Retry-After kept);
- `/v1/messages/count_tokens` is translated to Bedrock's CountTokens; the other
  Anthropic passthrough routes have no Bedrock equivalent and get a clear 404.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from mitmproxy import http

from addons.flow.state import FlowContext, Interception
from addons.providers.bedrock import EVENTSTREAM, build_invoke_request, token_count_headers, translate_error
from addons.providers.errors import Refusal, anthropic_error, replace_with_json
from addons.settings.config import DEFAULT_MAX_BODY_SIZE
from addons.settings.instances import BedrockSettings, Instance
from addons.upstreams.aws import BedrockCredentials, sign, signing_problem, signing_region
from addons.wire import anthropic
from addons.wire.encoding import BodyError, decode_body
from addons.wire.eventstream import BedrockToAnthropicSSE
from addons.wire.model import RequestInfo, ResponseSummary
from addons.wire.sse import SSEEvent

log = logging.getLogger("aigw.bedrock")

COUNT_TOKENS_ROUTE = "/v1/messages/count_tokens"

# Client headers that must not reach AWS: the gateway key / Anthropic
# credentials, Anthropic protocol headers (their content moved into the body),
# a stale body framing/encoding, and any SigV4 headers (AWS wants every x-amz-*
# header signed; ours replace them).
_DROPPED_HEADERS = frozenset({"authorization", "x-api-key", "content-encoding", "transfer-encoding"})
_DROPPED_PREFIXES = ("anthropic-", "x-amz-")


class BedrockUpstream:
    """The `Upstream` strategy for one Bedrock instance (see the module docstring)."""

    def __init__(self, instance: Instance, settings: BedrockSettings, credentials: BedrockCredentials) -> None:
        self.instance = instance
        self.settings = settings
        self.credentials = credentials
        self.region = signing_region(settings)

    # -- request -------------------------------------------------------------------

    def read_request(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> RequestInfo:
        return anthropic.parse_request(body)

    def read_response(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> ResponseSummary:
        return anthropic.parse_response(body)

    def forward(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any] | None) -> Refusal | None:
        if body is not None:
            return self._invoke(flow, ctx, body)
        if ctx.route.name == COUNT_TOKENS_ROUTE and flow.request.method == "POST":
            return self._count_tokens(flow, ctx)
        return Refusal(404, f"{flow.request.method} {ctx.route.name} is not available: instance "
                       f"{self.instance.name!r} serves Anthropic models from Amazon Bedrock, which has no "
                       f"equivalent (models: {self.settings.model}; for haiku requests: "
                       f"{self.settings.small_fast_model})", "not_found_error")

    def _invoke(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> Refusal | None:
        request = build_invoke_request(
            body, flow.request.headers.get_all("anthropic-beta"), endpoint=self.settings.endpoint,
            model=self.settings.model, small_fast_model=self.settings.small_fast_model)
        if ctx.interception is not None:
            ctx.interception.metadata["bedrock_model_id"] = request.model_id
        if request.stream:
            accept = {"accept": EVENTSTREAM, "x-amzn-bedrock-accept": "application/json"}
        else:
            accept = {"accept": "application/json"}
        operation = "invoke-with-response-stream" if request.stream else "invoke"
        return self._send(flow, ctx, operation, request.url, request.body, accept)

    def _count_tokens(self, flow: http.HTTPFlow, ctx: FlowContext) -> Refusal | None:
        """Anthropic count_tokens -> Bedrock CountTokens over the InvokeModel body it would send."""
        try:
            # A count_tokens body, decoded with a cap (never `get_content()`: a gzip bomb decodes whole).
            body = orjson.loads(decode_body(flow.request.raw_content or b"", flow.request.headers.get(
                "content-encoding", ""), DEFAULT_MAX_BODY_SIZE) or b"")
        except BodyError as e:
            return Refusal(e.status, e.message, e.error_type)
        except (orjson.JSONDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            return Refusal(400, "request body is not a JSON object", "invalid_request_error")
        body = {**body, "stream": False}
        if not isinstance(body.get("max_tokens"), int):
            # Required by the InvokeModel schema, irrelevant to the count; must exceed a thinking budget.
            thinking = body.get("thinking")
            budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
            body["max_tokens"] = budget + 1 if isinstance(budget, int) else 1
        invoke = build_invoke_request(
            body, flow.request.headers.get_all("anthropic-beta"), endpoint=self.settings.endpoint,
            model=self.settings.model, small_fast_model=self.settings.small_fast_model)
        url = invoke.url.rsplit("/", 1)[0] + "/count-tokens"
        # rest-json blobs travel base64-encoded.
        payload = orjson.dumps({"input": {"invokeModel": {"body": base64.b64encode(invoke.body).decode()}}})
        return self._send(flow, ctx, "count-tokens", url, payload, {"accept": "application/json"})

    def _send(self, flow: http.HTTPFlow, ctx: FlowContext, operation: str, url: str, body: bytes,
              extra_headers: dict[str, str]) -> Refusal | None:
        auth = self._authorization(ctx)
        if isinstance(auth, Refusal):
            return auth
        headers = flow.request.headers
        for name in {k.lower() for k in headers.keys()}:
            if name in _DROPPED_HEADERS or name.startswith(_DROPPED_PREFIXES):
                del headers[name]
        flow.request.url = url  # also sets Host, which the signature covers
        flow.request.content = body
        signed = {"content-type": "application/json", **extra_headers}
        for name, value in signed.items():
            headers[name] = value
        headers["accept-encoding"] = "identity"  # the tap must see plain frames
        if auth is None:
            assert self.region is not None
            credentials = self.credentials.current()
            assert credentials is not None
            for name, value in sign(url, body, signed, credentials, self.region).items():
                headers[name] = value
        else:
            headers["authorization"] = auth
        ctx.bedrock_operation = operation
        return None

    def _authorization(self, ctx: FlowContext) -> str | Refusal | None:
        """None: SigV4 with the instance's credentials (checked usable); a string: the client's own
        Bedrock API key as a Bearer token (BYOK); a Refusal when neither can work."""
        if ctx.byok:
            return f"Bearer {ctx.client_credential}"
        return signing_problem(self.instance.name, self.region, self.credentials)

    # -- response ------------------------------------------------------------------

    def response_headers(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        response = flow.response
        operation = ctx.bedrock_operation
        if response is None or operation is None or response.status_code >= 400 or operation == "count-tokens":
            return  # answered locally, or small and reshaped whole in `response`
        interception = ctx.interception
        if interception is None:
            response.stream = True
            return
        if response.headers.get("content-type", "").startswith(EVENTSTREAM):
            tap = EventStreamToSSE(interception)
            interception.parser = tap
            response.stream = tap
            as_sse_headers(flow)

    def response(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        response = flow.response
        operation = ctx.bedrock_operation
        if response is None or operation is None:
            return
        if response.status_code >= 400:
            anthropic_error_response(response)
        elif operation == "count-tokens":
            count_tokens_response(response)
        if ctx.interception is not None:
            counts = token_count_headers(response.headers)
            if counts:
                ctx.interception.token_metadata["bedrock_token_counts"] = counts


class EventStreamToSSE:
    """The stream tap for InvokeModelWithResponseStream, and the interception's stream parser.

    Bytes in: AWS event-stream frames (CRC-checked by botocore), arbitrarily
    chunked. Bytes out: one Anthropic SSE event per complete frame, as soon as
    it is complete. Exception frames, corruption and a stream cut mid-frame
    become an Anthropic `error` event (and end the conversion). Never raises.
    """

    __slots__ = ("converter", "parser", "timed")

    def __init__(self, timed: Interception | None = None) -> None:
        self.parser = anthropic.StreamParser()
        self.converter = BedrockToAnthropicSSE(on_event=self._on_event)
        self.timed = timed  # gets the first chunk's arrival time (time to first token), then is dropped

    def __call__(self, chunk: bytes) -> list[bytes]:
        if self.timed is not None and chunk:
            self.timed.first_chunk_at = datetime.now(UTC)
            self.timed = None
        try:
            out = self.converter.feed(chunk) if chunk else self.converter.close()
        except Exception:  # the converter never raises; belt and braces for the proxy core
            log.exception("bedrock stream tap failed")
            return []
        # An empty chunk would end the client's chunked body early: send nothing instead.
        return [out] if out else []

    def _on_event(self, event: dict) -> None:
        try:
            kind = str(event.get("type", "message"))
            self.parser.on_event(SSEEvent(kind, orjson.dumps(event).decode(), b""))
        except Exception:  # a parser bug must not stop the conversion the client depends on
            log.exception("bedrock stream: parsing an event failed")

    def summary(self) -> ResponseSummary:
        summary = self.parser.summary()
        metrics = self.converter.invocation_metrics
        if metrics is not None and summary.usage is not None:
            summary.usage.metadata["bedrock_invocation_metrics"] = dict(metrics)
        return summary


def as_sse_headers(flow: http.HTTPFlow) -> None:
    """The converted body is SSE of a different length than the upstream's frames."""
    assert flow.response is not None
    headers = flow.response.headers
    headers["content-type"] = "text/event-stream; charset=utf-8"
    for name in ("content-length", "x-amzn-bedrock-content-type"):
        headers.pop(name, None)
    if flow.request.http_version.startswith("HTTP/1") and "transfer-encoding" not in headers:
        headers["transfer-encoding"] = "chunked"  # without a length, HTTP/1 needs chunked framing
    request_id = headers.get("x-amzn-requestid")
    if request_id and "request-id" not in headers:
        headers["request-id"] = request_id  # where Anthropic SDKs look for it


def anthropic_error_response(response: http.Response) -> None:
    """An AWS error body -> Anthropic's error shape (status mapped, Retry-After kept)."""
    status, body = translate_error(response.status_code, response.get_content(strict=False) or b"",
                                   response.headers)
    replace_with_json(response, status, orjson.dumps(body))


def count_tokens_response(response: http.Response) -> None:
    try:
        body = orjson.loads(response.get_content(strict=False) or b"")
    except (orjson.JSONDecodeError, ValueError):
        body = None
    tokens = body.get("inputTokens") if isinstance(body, dict) else None
    if isinstance(tokens, int):
        replace_with_json(response, 200, orjson.dumps({"input_tokens": tokens}))
    else:
        replace_with_json(response, 502, anthropic_error("Bedrock CountTokens answered without inputTokens",
                                                         "api_error"))
