"""The Bedrock upstream strategy on mitmproxy test flows: rewrite, signing, stream tap, errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from botocore.credentials import ReadOnlyCredentials
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.chain.auth import Identity
from addons.chain.proxy_policy import build_host_map
from addons.flow.state import FlowContext, Interception
from addons.providers.anthropic import ANTHROPIC
from addons.providers.base import Api
from addons.providers.bedrock import BEDROCK, token_count_headers
from addons.providers.errors import Refusal
from addons.settings.config import Settings
from addons.settings.instances import BedrockSettings, Instance
from addons.upstreams.aws import BedrockCredentials, client_aws_credential
from addons.upstreams.bedrock_invoke import (
    BedrockUpstream,
    EventStreamToSSE,
    anthropic_error_response,
    count_tokens_response,
)
from addons.upstreams.bedrock_native import NativeBedrockUpstream
from addons.wire.model import RequestInfo
from tests.eventstream_encoder import chunk_frame, corrupt_crc, exception_frame
from tests.fakes.bedrock import anthropic_events, verify_sigv4

KEY, SECRET = "AKIDUNIT", "unit-secret-value"
SONNET = "anthropic.claude-sonnet-4-5-20250929-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/p1"
ENDPOINT = "https://bedrock-runtime.us-east-1.amazonaws.com"


def upstream(model: str = SONNET, credentials: BedrockCredentials | None = None) -> BedrockUpstream:
    settings = BedrockSettings(region="us-east-1", base_url=None, model=model, small_fast_model="small-model")
    instance = Instance(type="anthropic", name="anthropic-bedrock", keys=(), base_url="https://api.anthropic.com",
                        dump_dir=None, bedrock=settings, source="indexed")
    creds = credentials or BedrockCredentials(access_key=KEY, secret_key=SECRET)
    creds.start()
    return BedrockUpstream(instance, settings, creds)


def flow_and_ctx(path: str = "/v1/messages", body: dict[str, Any] | None = None, *, byok: bool = False,
                 **headers: str) -> tuple[http.HTTPFlow, FlowContext]:
    method = "GET" if path.startswith("/v1/models") else "POST"  # pass-through routes take their own methods
    request = tutils.treq(method=method.encode(), path=path.encode(), content=orjson.dumps(body or {}),
                          headers=http.Headers(host="127.0.0.1:8888", **headers))
    flow = tflow.tflow(req=request)
    route = ANTHROPIC.route(method, path)
    assert route is not None
    ctx = FlowContext(instance=upstream().instance, provider=ANTHROPIC, route=route, api_path=path, query="",
                      identity=Identity("u1", "alice", "k1", False), byok=byok,
                      received_at=dt.datetime.now(dt.UTC), client_credential="byok-token" if byok else None)
    if route.intercepted:
        ctx.interception = Interception(id="i1", api=route.api, started_at=dt.datetime.now(dt.UTC),  # type: ignore[arg-type]
                                        info=RequestInfo())
    return flow, ctx


def verify(flow: http.HTTPFlow) -> None:
    headers = {k.lower(): v for k, v in flow.request.headers.items()}
    failure = verify_sigv4(method="POST", url=f"{flow.request.scheme}://{flow.request.host_header}{flow.request.path}",
                           headers=headers, body=flow.request.raw_content or b"",
                           credentials=ReadOnlyCredentials(KEY, SECRET, None), region="us-east-1")
    assert failure is None, failure


def test_forward_rewrites_and_signs_the_exact_bytes() -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True, "messages": [], "metadata": {}}
    flow, ctx = flow_and_ctx(body=body, **{"x-api-key": "aigw-gateway-key", "anthropic-version": "2023-06-01",
                                           "anthropic-beta": "interleaved-thinking-2025-05-14",
                                           "content-encoding": "identity"})
    assert upstream().forward(flow, ctx, body) is None
    assert flow.request.url == f"{ENDPOINT}/model/{SONNET}/invoke-with-response-stream"
    assert flow.request.host_header == "bedrock-runtime.us-east-1.amazonaws.com"
    sent = orjson.loads(flow.request.raw_content or b"")
    assert sent == {"max_tokens": 5, "messages": [], "anthropic_version": "bedrock-2023-05-31",
                    "anthropic_beta": ["interleaved-thinking-2025-05-14"]}
    headers = flow.request.headers
    assert "x-api-key" not in headers and "anthropic-version" not in headers and "anthropic-beta" not in headers
    assert headers["accept"] == "application/vnd.amazon.eventstream"
    assert headers["content-length"] == str(len(flow.request.raw_content or b""))
    verify(flow)
    assert ctx.bedrock_operation == "invoke-with-response-stream"
    assert ctx.interception is not None and ctx.interception.metadata["bedrock_model_id"] == SONNET


def test_arn_model_ids_keep_their_percent_encoding() -> None:
    body = {"model": "claude-opus-4-1", "max_tokens": 5, "messages": []}
    flow, ctx = flow_and_ctx(body=body)
    assert upstream(ARN).forward(flow, ctx, body) is None
    assert flow.request.path == "/model/" + ARN.replace("/", "%2F") + "/invoke"
    verify(flow)


def test_missing_credentials_are_refused_without_touching_the_request() -> None:
    creds = BedrockCredentials(source=lambda: None, retry_initial=60)
    creds.start()
    assert creds.wait_ready(5) is False
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
    flow, ctx = flow_and_ctx(body=body)
    refusal = upstream(credentials=creds).forward(flow, ctx, body)
    creds.stop()
    assert isinstance(refusal, Refusal) and refusal.status == 502 and refusal.error_type == "api_error"
    assert "no AWS credentials found" in refusal.message
    assert flow.request.host == "address" and ctx.bedrock_operation is None


def test_byok_sends_the_clients_bedrock_api_key() -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
    flow, ctx = flow_and_ctx(body=body, byok=True)
    assert upstream().forward(flow, ctx, body) is None
    assert flow.request.headers["authorization"] == "Bearer byok-token"
    assert "x-amz-date" not in flow.request.headers


def test_passthrough_routes() -> None:
    flow, ctx = flow_and_ctx("/v1/models")
    refusal = upstream().forward(flow, ctx, None)
    assert isinstance(refusal, Refusal) and refusal.status == 404 and "Amazon Bedrock" in refusal.message
    flow, ctx = flow_and_ctx("/v1/messages/count_tokens", {"model": "claude-3-haiku", "messages": []})
    assert upstream().forward(flow, ctx, None) is None
    assert flow.request.path == "/model/small-model/count-tokens"
    verify(flow)


def test_stream_tap_converts_byte_by_byte_and_summarises() -> None:
    events = anthropic_events(SONNET)
    raw = b"".join(chunk_frame(e) for e in events)
    tap = EventStreamToSSE()
    out = b"".join(b"".join(tap(raw[i : i + 1])) for i in range(len(raw))) + b"".join(tap(b""))
    assert out.count(b"event: ") == len(events)
    assert b"invocationMetrics" not in out
    assert tap(b"") == []  # nothing left, and never an empty chunk
    summary = tap.summary()
    assert summary.complete and summary.error is None
    assert summary.usage is not None and summary.usage.output_tokens == 10
    assert summary.usage.metadata["bedrock_invocation_metrics"]["firstByteLatency"] == 123


@pytest.mark.parametrize(("tail", "message"), [
    (exception_frame("throttlingException", "slow down"), "rate_limit_error: slow down"),
    (corrupt_crc(chunk_frame({"type": "ping"})), "corrupted event stream frame"),
])
def test_stream_tap_failures_become_error_events(tail: bytes, message: str) -> None:
    tap = EventStreamToSSE()
    out = b"".join(tap(chunk_frame(anthropic_events(SONNET)[0]) + tail)) + b"".join(tap(b""))
    assert out.endswith(b"\n\n") and b"event: error\n" in out
    summary = tap.summary()
    assert summary.error is not None and message in summary.error


def test_stream_tap_reports_a_frame_cut_short() -> None:
    tap = EventStreamToSSE()
    frame = chunk_frame(anthropic_events(SONNET)[0])
    assert tap(frame[:-3]) == []
    (end,) = tap(b"")
    assert b"ended mid-frame" in end
    assert "ended mid-frame" in (tap.summary().error or "")


def test_aws_error_and_count_tokens_bodies() -> None:
    response = tutils.tresp(status_code=429, content=b'{"message":"Too many requests"}',
                            headers=http.Headers(**{"x-amzn-errortype": "ThrottlingException:http://x",
                                                    "retry-after": "3", "content-type": "application/json"}))
    anthropic_error_response(response)
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert orjson.loads(response.content or b"")["error"] == {"type": "rate_limit_error",
                                                               "message": "Too many requests"}
    response = tutils.tresp(content=b'{"inputTokens": 12}')
    count_tokens_response(response)
    assert orjson.loads(response.content or b"") == {"input_tokens": 12}


def test_token_count_headers() -> None:
    headers = http.Headers(**{"X-Amzn-Bedrock-Input-Token-Count": "10",
                              "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": "4",
                              "X-Amzn-Bedrock-Invocation-Latency": "99"})
    assert token_count_headers(headers) == {"input": 10, "cache_read_input": 4}


# -- Bedrock-native clients through the proxy -----------------------------------------------------


def test_runtime_hosts_are_decrypted_and_claimed_by_region() -> None:
    settings = Settings(instances=(upstream().instance,))
    host_map = build_host_map(settings)
    for host in ("bedrock-runtime.us-east-1.amazonaws.com", "BEDROCK-RUNTIME-FIPS.us-gov-west-1.amazonaws.com.",
                 "bedrock-runtime.cn-north-1.amazonaws.com.cn", "bedrock-runtime.eu-west-3.amazonaws.com"):
        assert host_map.is_native_bedrock(host), host
    for host in ("bedrock.us-east-1.amazonaws.com", "sts.amazonaws.com", "bedrock-runtime.us-east-1.evil.com",
                 "s3.us-east-1.amazonaws.com"):
        assert not host_map.is_native_bedrock(host), host
    # The instance's region host is its own (centralized); other regions are BYOK.
    match = host_map.match("bedrock-runtime.us-east-1.amazonaws.com", "/model/m/invoke")
    assert match is not None and match.instance.name == "anthropic-bedrock"
    assert host_map.match("bedrock-runtime.eu-west-3.amazonaws.com", "/model/m/invoke") is None
    assert not build_host_map(Settings(enabled=False, instances=settings.instances)).is_native_bedrock(
        "bedrock-runtime.us-east-1.amazonaws.com")


def test_client_aws_credential() -> None:
    sigv4 = ("AWS4-HMAC-SHA256 Credential=AKIDCLIENT/20260101/us-east-1/bedrock/aws4_request, "
             "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
    assert client_aws_credential(http.Headers(authorization=sigv4)) == "AKIDCLIENT"
    assert client_aws_credential(http.Headers(authorization="Bearer bedrock-api-key")) == "bedrock-api-key"
    assert client_aws_credential(http.Headers()) is None


def native_flow(body: bytes, **headers: str) -> tuple[http.HTTPFlow, FlowContext]:
    request = tutils.treq(method=b"POST", path=f"/model/{MODEL_QUOTED}/converse".encode(), content=body,
                          headers=http.Headers(host="bedrock-runtime.us-east-1.amazonaws.com", **headers))
    request.scheme, request.host, request.port = "https", "bedrock-runtime.us-east-1.amazonaws.com", 443
    flow = tflow.tflow(req=request)
    route = BEDROCK.route("POST", request.path)
    assert route is not None and route.api is Api.BEDROCK
    ctx = FlowContext(instance=upstream().instance, provider=BEDROCK, route=route, api_path=request.path, query="",
                      identity=Identity("u1", "alice", "k1", False), byok=False,
                      received_at=dt.datetime.now(dt.UTC))
    return flow, ctx


MODEL_QUOTED = "anthropic.claude-sonnet-4-5-20250929-v1%3A0"


def test_native_centralized_is_resigned_over_the_same_bytes() -> None:
    body = b'{"messages": [{"role": "user", "content": [{"text": "hi"}]}]}'
    flow, ctx = native_flow(body, authorization="AWS4-HMAC-SHA256 Credential=AKIDCLIENT/x", **{
        "x-amz-date": "20200101T000000Z", "content-type": "application/json", "x-amzn-bedrock-trace": "ENABLED"})
    bedrock_upstream = upstream()
    native = NativeBedrockUpstream(bedrock_upstream.settings, bedrock_upstream.credentials, "us-east-1")
    info = native.read_request(flow, ctx, orjson.loads(body))
    assert (info.model, info.stream, info.prompt) == ("anthropic.claude-sonnet-4-5-20250929-v1:0", False, "hi")
    assert native.forward(flow, ctx, orjson.loads(body)) is None
    assert flow.request.url == f"{ENDPOINT}/model/{MODEL_QUOTED}/converse"
    assert flow.request.raw_content == body
    assert "Credential=AKIDUNIT/" in flow.request.headers["authorization"]
    assert "x-amzn-bedrock-trace" in flow.request.headers["authorization"]  # what Bedrock reads is signed
    verify(flow)


def test_native_byok_changes_nothing() -> None:
    flow, ctx = native_flow(b"{}", authorization="AWS4-HMAC-SHA256 Credential=AKIDCLIENT/x")
    before = flow.request.copy()
    assert NativeBedrockUpstream(None, None, None).forward(flow, ctx, {}) is None
    assert flow.request.url == before.url and flow.request.headers == before.headers
