"""Upstream strategy: Bedrock-native clients through the proxy.

Bedrock-native clients (boto3, the Anthropic SDK's Bedrock client, Claude
Code with CLAUDE_CODE_USE_BEDROCK=1) reach bedrock-runtime.*.amazonaws.com
through the transparent proxy (`addons.chain.proxy`): `NativeBedrockUpstream`
records InvokeModel(WithResponseStream) and Converse(Stream) while relaying the
bytes unchanged, forwarding the client's own signature (BYOK) or re-signing
with the instance that claims the host (centralized).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from mitmproxy import http

from addons.flow.state import FlowContext, Interception
from addons.providers.bedrock import EVENTSTREAM, parse_model_path, token_count_headers
from addons.providers.errors import Refusal
from addons.settings.instances import BedrockSettings, Instance
from addons.upstreams.aws import BedrockCredentials, sign, signing_problem
from addons.wire import anthropic, converse
from addons.wire.converse import ConverseStreamParser, InvokeStreamParser
from addons.wire.model import RequestInfo, ResponseSummary

log = logging.getLogger("aigw.bedrock")


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
