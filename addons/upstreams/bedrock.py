"""Addon + upstream strategy: Anthropic Messages clients served from Amazon Bedrock.

An `anthropic` instance with Bedrock settings keeps speaking the Anthropic
Messages API to its clients while the gateway talks InvokeModel to Bedrock:

- `POST /v1/messages` becomes `POST /model/{id}/invoke` or
  `/invoke-with-response-stream` (`build_invoke_request`), SigV4-signed with
  the instance's AWS credentials over the exact bytes sent;
- the binary event stream is converted to Anthropic SSE chunk by chunk in the
  stream tap (`BedrockToAnthropicSSE`) while the Anthropic stream parser reads
  the same events; blocking JSON is already an Anthropic Message;
- AWS error bodies become Anthropic error bodies (status and Retry-After kept);
- `/v1/messages/count_tokens` is translated to Bedrock's CountTokens; the other
  Anthropic passthrough routes have no Bedrock equivalent and get a clear 404.

Bedrock-native clients (boto3, the Anthropic SDK's Bedrock client, Claude
Code with CLAUDE_CODE_USE_BEDROCK=1) reach bedrock-runtime.*.amazonaws.com
through the transparent proxy (`addons.chain.proxy`): `NativeBedrockUpstream`
records InvokeModel(WithResponseStream) and Converse(Stream) while relaying the
bytes unchanged, forwarding the client's own signature (BYOK) or re-signing
with the instance that claims the host (centralized).

Credentials resolve and refresh on `BedrockCredentials`' own thread; the
event loop only ever reads the current frozen set.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from mitmproxy import http
from mitmproxy.net.http import status_codes

from addons.flow.state import FlowContext
from addons.providers.bedrock import (
    BedrockCredentials,
    build_invoke_request,
    parse_model_path,
    region_from_endpoint,
    sign,
    translate_error,
)
from addons.settings.config import DEFAULT_MAX_BODY_SIZE, BedrockSettings, Instance, Settings
from addons.upstreams.base import Refusal, Upstream
from addons.wire import anthropic, converse
from addons.wire.converse import ConverseStreamParser, InvokeStreamParser
from addons.wire.encoding import BodyError, decode_body
from addons.wire.eventstream import BedrockToAnthropicSSE
from addons.wire.model import RequestInfo, ResponseSummary
from addons.wire.sse import SSEEvent

if TYPE_CHECKING:
    from addons.chain.intercept import Interception

log = logging.getLogger("aigw.bedrock")

EVENTSTREAM = "application/vnd.amazon.eventstream"
# ctx.extra key: the Bedrock operation a flow was sent to (absent: answered locally).
OPERATION = "bedrock_operation"
COUNT_TOKENS_ROUTE = "/v1/messages/count_tokens"
# How long startup waits for the first credential resolution (IMDS/SSO can be slow).
STARTUP_WAIT = 10.0

# Client headers that must not reach AWS: the gateway key / Anthropic
# credentials, Anthropic protocol headers (their content moved into the body),
# a stale body framing/encoding, and any SigV4 headers (AWS wants every x-amz-*
# header signed; ours replace them).
_DROPPED_HEADERS = frozenset({"authorization", "x-api-key", "content-encoding", "transfer-encoding"})
_DROPPED_PREFIXES = ("anthropic-", "x-amz-")
_TOKEN_COUNT_HEADER = re.compile(r"x-amzn-bedrock-(.+)-token-count")


class BedrockUpstreams:
    """Addon: one `BedrockUpstream` (and its credentials) per Bedrock instance.

    Credentials start at gateway start and stop with it; `upstream_for` is the
    Interceptor's strategy lookup.
    """

    def __init__(self, settings: Settings) -> None:
        self.upstreams: dict[str, BedrockUpstream] = {
            i.name: BedrockUpstream(i, i.bedrock, credentials_for(i.bedrock))
            for i in settings.instances
            if i.bedrock is not None
        }
        # Bedrock-native clients through the proxy: re-signed with an instance's
        # credentials (centralized), or with their own signature untouched (BYOK).
        self.native = {name: NativeBedrockUpstream(u.settings, u.credentials, u.region)
                       for name, u in self.upstreams.items()}
        self.native_byok = NativeBedrockUpstream(None, None, None)

    def upstream_for(self, ctx: FlowContext) -> Upstream | None:
        if ctx.provider.type == "bedrock":  # a Bedrock-native request (recorded or passthrough)
            return self.native_byok if ctx.byok else self.native.get(ctx.instance.name)
        return self.upstreams.get(ctx.instance.name) if ctx.instance.bedrock is not None else None

    async def start(self, timeout: float = STARTUP_WAIT) -> None:
        """Start every instance's credentials and wait (off the loop) for the first resolution,
        so the first requests after start-up do not fail just because the chain was still loading."""
        for upstream in self.upstreams.values():
            upstream.credentials.start()
        await asyncio.gather(*(asyncio.to_thread(u.credentials.wait_ready, timeout)
                               for u in self.upstreams.values()))
        for name, upstream in self.upstreams.items():
            if upstream.credentials.current() is None:
                log.warning("bedrock instance %r: AWS credentials unavailable (requests answer 502 until "
                            "they resolve): %s", name, upstream.credentials.error)
            if upstream.region is None:
                log.warning("bedrock instance %r: no signing region (set its BEDROCK_REGION)", name)

    def done(self) -> None:
        for upstream in self.upstreams.values():
            upstream.credentials.stop()


def credentials_for(settings: BedrockSettings) -> BedrockCredentials:
    """Static keys when configured, else boto3's default chain (resolved on a thread)."""
    if settings.access_key and settings.access_key_secret:
        return BedrockCredentials(access_key=settings.access_key, secret_key=settings.access_key_secret)
    return BedrockCredentials()


def signing_region(settings: BedrockSettings) -> str | None:
    # A custom base URL (VPC endpoint, proxy, test fake) may not name the region;
    # AWS_REGION / AWS_DEFAULT_REGION are what the AWS SDKs fall back to.
    return (settings.region or region_from_endpoint(settings.endpoint)
            or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


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
        ctx.extra[OPERATION] = operation
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
        operation = ctx.extra.get(OPERATION)
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
        operation = ctx.extra.get(OPERATION)
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


def signing_problem(name: str, region: str | None, credentials: BedrockCredentials) -> Refusal | None:
    """Why the gateway cannot sign for instance `name` right now (never naming a secret), or None."""
    if region is None:
        return Refusal(502, f"instance {name!r} has no AWS region to sign Bedrock requests for; "
                       "set its BEDROCK_REGION", "api_error")
    if credentials.current() is None:
        return Refusal(502, f"AWS credentials for Amazon Bedrock (instance {name!r}) are unavailable: "
                       f"{credentials.error}", "api_error")
    return None


class NativeBedrockUpstream:
    """The `Upstream` strategy for Bedrock-native clients through the proxy.

    Requests and responses keep Bedrock's own wire format: the body goes on as
    sent and the response (event stream included) comes back byte for byte,
    decoded on the side for the records. With `credentials` (an instance claims
    the host) the request goes to that instance's endpoint, re-signed with its
    credentials; without (BYOK) it goes to the host the client named with the
    client's own signature, untouched.
    """

    def __init__(self, settings: BedrockSettings | None, credentials: BedrockCredentials | None,
                 region: str | None) -> None:
        self.settings = settings
        self.credentials = credentials
        self.region = region

    def read_request(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> RequestInfo:
        model, operation = native_operation(ctx)
        stream = operation.endswith("-stream")
        if operation.startswith("converse"):
            return converse.parse_request(body, model=model, stream=stream)
        info = anthropic.parse_request(body)  # InvokeModel of an Anthropic model: a Messages body
        info.model, info.stream = model, stream
        return info

    def read_response(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any]) -> ResponseSummary:
        model, operation = native_operation(ctx)
        if operation == "converse":
            assert flow.response is not None
            return converse.parse_response(body, model=model,
                                           response_id=flow.response.headers.get("x-amzn-requestid"))
        return anthropic.parse_response(body)

    def forward(self, flow: http.HTTPFlow, ctx: FlowContext, body: dict[str, Any] | None) -> Refusal | None:
        if self.credentials is None or self.settings is None:
            return None  # BYOK: the client's signature covers this exact request; change nothing
        problem = signing_problem(ctx.instance.name, self.region, self.credentials)
        if problem is not None:
            return problem
        assert self.region is not None
        headers = flow.request.headers
        for name in {k.lower() for k in headers.keys()}:
            if name in ("authorization", "x-api-key") or name.startswith("x-amz-"):
                del headers[name]  # the client's signature; ours replaces it
        url = self.settings.endpoint + ctx.api_path + ctx.query
        flow.request.url = url
        headers["accept-encoding"] = "identity"  # the tap must see plain frames
        payload = flow.request.raw_content or b""
        # What Bedrock interprets is signed; other client headers (user agent, SDK ids) pass unsigned.
        signed = {k: headers[k] for k in {k.lower() for k in headers.keys()}
                  if k in ("content-type", "content-encoding", "accept") or k.startswith("x-amzn-bedrock-")}
        credentials = self.credentials.current()
        assert credentials is not None
        for name, value in sign(url, payload, signed, credentials, self.region).items():
            headers[name] = value
        return None

    def response_headers(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        response = flow.response
        assert response is not None
        interception = ctx.interception
        if interception is None:
            response.stream = True  # count-tokens & co.: relayed, not recorded
            return
        if (200 <= response.status_code < 300 and response.headers.get("content-type", "").startswith(EVENTSTREAM)
                and "content-encoding" not in response.headers):
            model, operation = native_operation(ctx)
            parser: ConverseStreamParser | InvokeStreamParser
            if operation == "converse-stream":
                parser = ConverseStreamParser(model=model, response_id=response.headers.get("x-amzn-requestid"))
            else:
                parser = InvokeStreamParser()
            tap = RelayTap(parser, interception)
            interception.parser = tap
            response.stream = tap
        # Blocking JSON and AWS errors are small: read whole in `response` and relayed as they are.

    def response(self, flow: http.HTTPFlow, ctx: FlowContext) -> None:
        if ctx.interception is not None and flow.response is not None:
            counts = token_count_headers(flow.response.headers)
            if counts:
                ctx.interception.token_metadata["bedrock_token_counts"] = counts


def native_operation(ctx: FlowContext) -> tuple[str | None, str]:
    """(model id, operation) of a Bedrock-native request, from its path."""
    parsed = parse_model_path(ctx.api_path)
    return parsed if parsed is not None else (None, "")


def native_instance(host: str) -> Instance:
    """The instance a BYOK Bedrock-native request is recorded under (no configured one claims the host)."""
    return Instance(type="bedrock", name="bedrock", keys=(), base_url=f"https://{host}", dump_dir=None,
                    bedrock=None, source="proxy")


_SIGV4_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def client_aws_credential(headers: http.Headers) -> str | None:
    """The client's own AWS credential, for BYOK: its access key id (SigV4) or Bedrock API key (Bearer)."""
    auth = headers.get("authorization", "")
    if auth.startswith("AWS4-"):
        m = _SIGV4_CREDENTIAL.search(auth)
        return m.group(1) if m else None
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


class RelayTap:
    """Stream tap for Bedrock-native event streams: every chunk goes on unchanged while the
    decoder reads it. Also the interception's stream parser. Never raises."""

    __slots__ = ("failed", "parser", "timed")

    def __init__(self, parser: ConverseStreamParser | InvokeStreamParser, timed: Interception | None = None) -> None:
        self.parser = parser
        self.failed = False
        self.timed = timed  # gets the first chunk's arrival time (time to first token), then is dropped

    def __call__(self, chunk: bytes) -> bytes:
        if self.timed is not None and chunk:
            self.timed.first_chunk_at = datetime.now(UTC)
            self.timed = None
        if not self.failed:
            try:
                if chunk:
                    self.parser.feed(chunk)
                else:
                    self.parser.close()
            except Exception:  # a parser bug must not break the client's stream
                log.exception("bedrock relay tap failed; relaying the rest unparsed")
                self.failed = True
        return chunk

    def summary(self) -> ResponseSummary:
        return self.parser.summary()


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
    set_json(response, status, body)


def count_tokens_response(response: http.Response) -> None:
    try:
        body = orjson.loads(response.get_content(strict=False) or b"")
    except (orjson.JSONDecodeError, ValueError):
        body = None
    tokens = body.get("inputTokens") if isinstance(body, dict) else None
    if isinstance(tokens, int):
        set_json(response, 200, {"input_tokens": tokens})
    else:
        set_json(response, 502, {"type": "error", "error": {
            "type": "api_error", "message": "Bedrock CountTokens answered without inputTokens"}})


def set_json(response: http.Response, status: int, body: dict[str, Any]) -> None:
    response.status_code = status
    response.reason = status_codes.RESPONSES.get(status, "")
    response.headers.pop("content-encoding", None)
    response.headers["content-type"] = "application/json"
    response.content = orjson.dumps(body)


def token_count_headers(headers: http.Headers) -> dict[str, int]:
    """X-Amzn-Bedrock-{Input,Output,Cache-Read-Input,Cache-Write-Input}-Token-Count -> {"input": n, ...}."""
    counts: dict[str, int] = {}
    for name, value in headers.items():
        m = _TOKEN_COUNT_HEADER.fullmatch(name.lower())
        if m and value.strip().isdigit():
            counts[m.group(1).replace("-", "_")] = int(value)
    return counts
