"""Anthropic -> Bedrock request rewrite, SigV4 signing and error translation."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from botocore.credentials import ReadOnlyCredentials

from addons.providers.bedrock import (
    BEDROCK_ANTHROPIC_VERSION,
    ClaudeVersion,
    build_invoke_request,
    claude_version,
    filter_betas,
    parse_model_path,
    region_from_endpoint,
    resolve_region,
    translate_error,
)
from addons.upstreams.aws import sign
from tests import txtar
from tests.fakes.bedrock import FakeBedrock, Reply, verify_sigv4

ENDPOINT = "https://bedrock-runtime.us-west-2.amazonaws.com"
SONNET_45 = "anthropic.claude-sonnet-4-5-20241022-v2:0"
HAIKU_45 = "anthropic.claude-haiku-4-5-20241022-v1:0"
CLIENT_BETAS = [
    "interleaved-thinking-2025-05-14,effort-2025-11-24,context-management-2025-06-27,prompt-caching-scope-2026-01-05"
]
STRIPPABLE = ["metadata", "service_tier", "container", "inference_geo", "output_config", "context_management"]


def rewrite(body: dict, betas: list[str] | None = None, model: str = SONNET_45, small: str = HAIKU_45) -> dict:
    req = build_invoke_request(body, betas or [], endpoint=ENDPOINT, model=model, small_fast_model=small)
    return orjson.loads(req.body)


# --- the captured Bedrock fixture (expectations from aibridge's own test) ---------------------------


@pytest.fixture
def fixture_request() -> dict:
    if txtar.FIXTURES is None:
        pytest.skip(txtar.SKIP_REASON)
    _, sections = txtar.load(txtar.FIXTURES / "anthropic" / "simple_bedrock.txtar")
    return orjson.loads(sections["request"])


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("model", "thinking", "kept", "betas"),
    [
        # Matches no known model: adaptive -> enabled, 32000 * 0.5 (effort medium); gated betas dropped.
        ("beddel", {"type": "enabled", "budget_tokens": 16000}, [], ["interleaved-thinking-2025-05-14"]),
        (
            "anthropic.claude-opus-4-5-20250514-v1:0",
            {"type": "enabled", "budget_tokens": 16000},
            ["output_config"],
            ["interleaved-thinking-2025-05-14", "effort-2025-11-24"],
        ),
        (
            SONNET_45,
            {"type": "enabled", "budget_tokens": 16000},
            ["context_management"],
            ["interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
        ),
        # 4.6 supports adaptive natively.
        ("anthropic.claude-opus-4-6-20260619-v1:0", {"type": "adaptive"}, [], ["interleaved-thinking-2025-05-14"]),
    ],
)
def test_fixture_rewrite(
    fixture_request: dict, stream: bool, model: str, thinking: dict, kept: list[str], betas: list[str]
) -> None:
    fixture_request["stream"] = stream
    req = build_invoke_request(fixture_request, CLIENT_BETAS, endpoint=ENDPOINT, model=model, small_fast_model="x")
    body = orjson.loads(req.body)
    assert req.model_id == model and req.stream is stream
    action = "invoke-with-response-stream" if stream else "invoke"
    assert urlsplit(req.url).path == f"/model/{model}/{action}"
    for name in STRIPPABLE:
        assert (name in body) == (name in kept), name
    assert body["thinking"] == thinking
    assert body["anthropic_beta"] == betas
    assert body["anthropic_version"] == BEDROCK_ANTHROPIC_VERSION
    assert "model" not in body and "stream" not in body
    assert body["messages"] == fixture_request["messages"] and body["max_tokens"] == 32000


# --- synthetic bodies -------------------------------------------------------------------------------


def base_body(**extra: object) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("claude-haiku-4-5-20251001", HAIKU_45),
        ("claude-3-5-HAIKU-latest", HAIKU_45),
        ("claude-sonnet-4-5", SONNET_45),
        ("claude-opus-4-6", SONNET_45),
        (None, SONNET_45),
    ],
)
def test_model_mapping(requested: str | None, expected: str) -> None:
    body = base_body(model=requested)
    req = build_invoke_request(body, [], endpoint=ENDPOINT, model=SONNET_45, small_fast_model=HAIKU_45)
    assert req.model_id == expected


def test_small_fast_model_falls_back_and_model_required() -> None:
    body = base_body(model="claude-haiku-4-5")
    req = build_invoke_request(body, [], endpoint=ENDPOINT, model=SONNET_45, small_fast_model="")
    assert req.model_id == SONNET_45
    with pytest.raises(ValueError, match="model is required"):
        build_invoke_request(body, [], endpoint=ENDPOINT, model="", small_fast_model=HAIKU_45)


@pytest.mark.parametrize(
    ("model_id", "path"),
    [
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "/model/global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
            "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fa1b2c3",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-5-v1:0",
            "/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.anthropic.claude-opus-4-5-v1:0",
        ),
    ],
)
def test_model_id_quoting(model_id: str, path: str) -> None:
    req = build_invoke_request(
        base_body(stream=True), [], endpoint=ENDPOINT + "/", model=model_id, small_fast_model=model_id
    )
    assert req.url == f"{ENDPOINT}{path}/invoke-with-response-stream"
    assert parse_model_path(urlsplit(req.url).path) == (model_id, "invoke-with-response-stream")


def test_stream_must_be_true() -> None:
    req = build_invoke_request(base_body(stream="yes"), [], endpoint=ENDPOINT, model=SONNET_45, small_fast_model="")
    assert req.url.endswith("/invoke") and not req.stream


def test_beta_filtering() -> None:
    values = [
        " interleaved-thinking-2025-05-14 , oauth-2025-04-20",
        "context-1m-2025-08-07",
        "interleaved-thinking-2025-05-14,,",
    ]
    assert filter_betas(values, SONNET_45) == ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]
    assert filter_betas(["effort-2025-11-24"], "us.anthropic.claude-opus-4-5-20251101-v1:0") == ["effort-2025-11-24"]
    assert filter_betas(["effort-2025-11-24"], "anthropic.claude-opus-4-6-v1") == []
    assert filter_betas(["context-management-2025-06-27"], HAIKU_45) == ["context-management-2025-06-27"]
    body = rewrite(base_body(anthropic_beta=["token-efficient-tools-2025-02-19", "bogus"]), ["oauth-2025-04-20"])
    assert body["anthropic_beta"] == ["token-efficient-tools-2025-02-19"]
    assert "anthropic_beta" not in rewrite(base_body(), ["oauth-2025-04-20,claude-code-20250219"])


def test_field_stripping_keeps_the_rest_and_does_not_mutate_input() -> None:
    body = base_body(
        system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        tools=[{"name": "t", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
        temperature=0.2,
        metadata={"user_id": "u"},
        service_tier="auto",
        container="c",
        inference_geo={"allow": ["us"]},
        output_config={"effort": "low"},
        context_management={"edits": []},
        anthropic_version="2023-06-01",
        stream=False,
    )
    original = copy.deepcopy(body)
    out = rewrite(body)
    assert body == original
    assert set(out) == {"max_tokens", "messages", "system", "tools", "tool_choice", "temperature", "anthropic_version"}
    assert out["anthropic_version"] == BEDROCK_ANTHROPIC_VERSION


@pytest.mark.parametrize(
    ("model", "thinking", "extra", "expected"),
    [
        # effort -> ratio of max_tokens (4096): low .2, high/absent .8, max .95
        (SONNET_45, {"type": "adaptive"}, {"output_config": {"effort": "low"}}, {"type": "disabled"}),
        (SONNET_45, {"type": "adaptive"}, {}, {"type": "enabled", "budget_tokens": 3276}),
        (
            SONNET_45,
            {"type": "adaptive"},
            {"output_config": {"effort": "max"}},
            {"type": "enabled", "budget_tokens": 3891},
        ),
        (SONNET_45, {"type": "enabled", "budget_tokens": 2000}, {}, {"type": "enabled", "budget_tokens": 2000}),
        (
            "anthropic.claude-3-7-sonnet-20250219-v1:0",
            {"type": "adaptive"},
            {},
            {"type": "enabled", "budget_tokens": 3276},
        ),
        ("us.anthropic.claude-sonnet-4-6", {"type": "adaptive"}, {}, {"type": "adaptive"}),
        # Opus 4.7+ accepts only adaptive.
        ("global.anthropic.claude-opus-4-7-v1:0", {"type": "enabled", "budget_tokens": 2000}, {}, {"type": "adaptive"}),
        ("global.anthropic.claude-opus-4-7-v1:0", {"type": "adaptive"}, {}, {"type": "adaptive"}),
    ],
)
def test_thinking_conversion(model: str, thinking: dict, extra: dict, expected: dict) -> None:
    assert rewrite(base_body(thinking=thinking, **extra), model=model)["thinking"] == expected


def test_adaptive_without_max_tokens_is_left_for_bedrock() -> None:
    body = base_body(thinking={"type": "adaptive"})
    del body["max_tokens"]
    assert rewrite(body)["thinking"] == {"type": "adaptive"}


def test_opus_47_keeps_output_config_without_format() -> None:
    body = base_body(output_config={"effort": "high", "format": {"type": "json_schema"}})
    out = rewrite(body, model="global.anthropic.claude-opus-4-7-v1:0")
    assert out["output_config"] == {"effort": "high"}
    assert "output_config" not in rewrite(body)


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", ClaudeVersion("sonnet", 4, 5)),
        ("anthropic.claude-opus-4-20250514-v1:0", ClaudeVersion("opus", 4, 0)),
        ("anthropic.claude-opus-4-1-20250805-v1:0", ClaudeVersion("opus", 4, 1)),
        ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", ClaudeVersion("sonnet", 3, 7)),
        ("anthropic.claude-3-haiku-20240307-v1:0", ClaudeVersion("haiku", 3, 0)),
        ("arn:aws:bedrock:us-east-1:1:application-inference-profile/x", None),
    ],
)
def test_claude_version(model_id: str, expected: ClaudeVersion | None) -> None:
    assert claude_version(model_id) == expected


@pytest.mark.parametrize(
    ("endpoint", "region"),
    [
        ("https://bedrock-runtime.us-west-2.amazonaws.com", "us-west-2"),
        ("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com/", "us-gov-west-1"),
        ("https://bedrock-runtime.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("https://vpce-0abc.bedrock-runtime.eu-central-1.vpce.amazonaws.com", "eu-central-1"),
        ("bedrock-runtime.ap-southeast-2.amazonaws.com", "ap-southeast-2"),
        ("http://127.0.0.1:8080", None),
    ],
)
def test_region_from_endpoint(endpoint: str, region: str | None) -> None:
    assert region_from_endpoint(endpoint) == region


def test_resolve_region() -> None:
    assert resolve_region("http://127.0.0.1:1", "eu-west-1") == "eu-west-1"
    assert resolve_region(ENDPOINT, None) == "us-west-2"
    with pytest.raises(ValueError, match="region is required"):
        resolve_region("http://127.0.0.1:1", None)


def test_parse_model_path() -> None:
    assert parse_model_path("/model/anthropic.claude-v2%3A1/converse-stream?x=1") == (
        "anthropic.claude-v2:1",
        "converse-stream",
    )
    assert parse_model_path("/prefix/model/m/invoke") == ("m", "invoke")
    assert parse_model_path("/model/m/invoke/extra") is None
    assert parse_model_path("/v1/messages") is None


# --- signing -------------------------------------------------------------------------------------------

CREDS = ReadOnlyCredentials("AKIDTESTSIGN", "test-secret-key", None)


def _verify(url: str, body: bytes, headers: dict[str, str], creds: ReadOnlyCredentials, region: str) -> object:
    host = urlsplit(url).netloc
    raw_path = url.split(host, 1)[1]
    all_headers = {k.lower(): v for k, v in headers.items()} | {"host": host}
    return verify_sigv4(
        method="POST", url=f"http://{host}{raw_path}", headers=all_headers, body=body, credentials=creds, region=region
    )


def test_sign_verifies_with_the_fake_verifier() -> None:
    req = build_invoke_request(base_body(stream=True), [], endpoint=ENDPOINT, model=SONNET_45, small_fast_model="")
    base = {"content-type": "application/json", "x-amzn-bedrock-accept": "*/*"}
    auth = sign(req.url, req.body, base | {"Connection": "keep-alive", "Host": "evil"}, CREDS, "us-west-2")
    assert set(auth) == {"Authorization", "X-Amz-Date"}
    assert "/us-west-2/bedrock/aws4_request" in auth["Authorization"]
    headers = base | auth
    assert _verify(req.url, req.body, headers, CREDS, "us-west-2") is None
    assert _verify(req.url, req.body + b" ", headers, CREDS, "us-west-2") is not None
    assert _verify(req.url, req.body, headers | {"content-type": "text/plain"}, CREDS, "us-west-2") is not None
    assert _verify(req.url, req.body, headers, CREDS, "us-east-1") is not None
    wrong = ReadOnlyCredentials(CREDS.access_key, "other-secret", None)
    failure = _verify(req.url, req.body, headers, wrong, "us-west-2")
    assert failure is not None and failure.error_type == "InvalidSignatureException"  # type: ignore[attr-defined]


def test_sign_with_session_token() -> None:
    creds = ReadOnlyCredentials("ASIATEMP", "temp-secret", "session-token-value")
    url = f"{ENDPOINT}/model/m/invoke"
    auth = sign(url, b"{}", {"content-type": "application/json"}, creds, "us-west-2")
    assert auth["X-Amz-Security-Token"] == "session-token-value"
    assert "x-amz-security-token" in auth["Authorization"]
    assert _verify(url, b"{}", {"content-type": "application/json"} | auth, creds, "us-west-2") is None
    no_token = {k: v for k, v in auth.items() if k != "X-Amz-Security-Token"}
    assert _verify(url, b"{}", {"content-type": "application/json"} | no_token, creds, "us-west-2") is not None


def test_verifier_rejects_stale_signatures() -> None:
    url = f"{ENDPOINT}/model/m/invoke"
    auth = sign(url, b"{}", {}, CREDS, "us-west-2")
    headers = {k.lower(): v for k, v in auth.items()} | {"host": urlsplit(url).netloc}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    failure = verify_sigv4(
        method="POST", url=url, headers=headers, body=b"{}", credentials=CREDS, region="us-west-2", now=later
    )
    assert failure is not None and "expired" in failure.message


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    server = FakeBedrock(CREDS.access_key, CREDS.secret_key, "us-west-2")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "model", [SONNET_45, "arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/p1"]
)
def test_signed_request_accepted_by_fake(fake: FakeBedrock, model: str) -> None:
    req = build_invoke_request(base_body(), [], endpoint=fake.base_url, model=model, small_fast_model="")
    headers = {"content-type": "application/json", "accept": "application/json"}
    headers |= sign(req.url, req.body, headers, CREDS, "us-west-2")
    response = httpx.post(req.url, content=req.body, headers=headers)
    assert response.status_code == 200, response.text
    (seen,) = fake.requests
    assert seen.auth_error is None and seen.model_id == model and seen.body == req.body


def test_wrongly_signed_request_translates_to_permission_error(fake: FakeBedrock) -> None:
    req = build_invoke_request(base_body(), [], endpoint=fake.base_url, model=SONNET_45, small_fast_model="")
    bad = ReadOnlyCredentials(CREDS.access_key, "not-the-secret", None)
    headers = {"content-type": "application/json"}
    headers |= sign(req.url, req.body, headers, bad, "us-west-2")
    response = httpx.post(req.url, content=req.body, headers=headers)
    assert response.status_code == 403
    status, body = translate_error(response.status_code, response.content, response.headers)
    assert status == 403 and body["error"]["type"] == "permission_error"
    assert "signature we calculated does not match" in body["error"]["message"]
    assert body["request_id"] == response.headers["x-amzn-requestid"]


def test_fake_error_reply_translates(fake: FakeBedrock) -> None:
    fake.enqueue(Reply.aws_error(429, "ThrottlingException", "Too many requests", retry_after=7))
    req = build_invoke_request(base_body(), [], endpoint=fake.base_url, model=SONNET_45, small_fast_model="")
    headers = {"content-type": "application/json"}
    headers |= sign(req.url, req.body, headers, CREDS, "us-west-2")
    response = httpx.post(req.url, content=req.body, headers=headers)
    assert response.headers["retry-after"] == "7"
    assert translate_error(response.status_code, response.content, response.headers)[1]["error"] == {
        "type": "rate_limit_error",
        "message": "Too many requests",
    }


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected_status", "expected_type", "message"),
    [
        (
            400,
            b'{"message":"messages: field required"}',
            {"x-amzn-ErrorType": "ValidationException:http://x/"},
            400,
            "invalid_request_error",
            "messages: field required",
        ),
        (
            400,
            b'{"message":"The provided model identifier is invalid."}',
            {"x-amzn-ErrorType": "ValidationException"},
            404,
            "not_found_error",
            "The provided model identifier is invalid.",
        ),
        (
            403,
            b'{"Message":"User is not authorized"}',
            {"X-Amzn-ErrorType": "AccessDeniedException"},
            403,
            "permission_error",
            "User is not authorized",
        ),
        (
            404,
            b'{"message":"Model not found"}',
            {"x-amzn-errortype": "ResourceNotFoundException"},
            404,
            "not_found_error",
            "Model not found",
        ),
        (
            429,
            b'{"message":"Too many tokens"}',
            {"x-amzn-errortype": "ThrottlingException"},
            429,
            "rate_limit_error",
            "Too many tokens",
        ),
        (500, b'{"message":"oops"}', {"x-amzn-errortype": "InternalServerException"}, 500, "api_error", "oops"),
        (
            503,
            b'{"message":"busy"}',
            {"x-amzn-errortype": "ServiceUnavailableException"},
            503,
            "overloaded_error",
            "busy",
        ),
        (408, b'{"message":"slow"}', {"x-amzn-errortype": "ModelTimeoutException"}, 408, "timeout_error", "slow"),
        (
            400,
            b'{"__type":"com.amazon.coral#SerializationException","Message":"bad"}',
            {},
            400,
            "invalid_request_error",
            "bad",
        ),
        (502, b"<html>Bad Gateway</html>", {}, 502, "api_error", "<html>Bad Gateway</html>"),
        (503, b"", {}, 503, "overloaded_error", "Bedrock returned HTTP 503"),
        (
            403,
            b"{}",
            [("x-amzn-ErrorType", "UnrecognizedClientException")],
            403,
            "permission_error",
            "UnrecognizedClientException",
        ),
    ],
)
def test_translate_error(
    status: int, body: bytes, headers: object, expected_status: int, expected_type: str, message: str
) -> None:
    got_status, got = translate_error(status, body, headers)
    assert got_status == expected_status
    assert got == {"type": "error", "error": {"type": expected_type, "message": message}}
