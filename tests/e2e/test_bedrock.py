"""Anthropic clients served from Amazon Bedrock, end to end.

A real gateway subprocess with Bedrock instances pointed at FakeBedrock (which
verifies every SigV4 signature), driven by the official anthropic SDK and raw
httpx. Nothing contacts AWS.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests import txtar
from tests.eventstream_encoder import chunk_frame, corrupt_crc, error_frame, exception_frame
from tests.fakes.bedrock import COUNT_TOKENS, TEXT, FakeBedrock, Received, Reply, anthropic_events
from tests.gateway_process import Gateway, clean_env
from tests.gateway_process import latest_ended_after as latest_after
from tests.gateway_process import settled_count as count

pytestmark = pytest.mark.e2e

SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
# An application inference profile ARN: its "/" must reach Bedrock as %2F.
PROFILE_ARN = "arn:aws:bedrock:eu-west-1:123456789012:application-inference-profile/abc123"
STATIC_KEY, STATIC_SECRET = "AKIDSTATICBEDROCK", "static-secret-Zq8v0rXw3TtY"
CHAIN_KEY, CHAIN_SECRET, CHAIN_TOKEN = "ASIACHAINBEDROCK", "chain-secret-Kf93hDp2", "chain-session-token-77ab"
WRONG_SECRET = "wrong-secret-Pp4cJ9"
SECRETS = (STATIC_SECRET, CHAIN_SECRET, CHAIN_TOKEN, WRONG_SECRET)
MESSAGES = [{"role": "user", "content": "hi there"}]


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    f = FakeBedrock(STATIC_KEY, STATIC_SECRET, "us-east-1")
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def chain_fake() -> Iterator[FakeBedrock]:
    f = FakeBedrock(CHAIN_KEY, CHAIN_SECRET, "eu-west-1", session_token=CHAIN_TOKEN)
    f.start()
    yield f
    f.stop()


def bedrock_instance(index: int, name: str, base_url: str, region: str, model: str, **extra: str) -> dict[str, str]:
    prefix = f"CODER_AIBRIDGE_PROVIDER_{index}_"
    env = {"TYPE": "anthropic", "NAME": name, "BEDROCK_REGION": region, "BEDROCK_BASE_URL": base_url,
           "BEDROCK_MODEL": model, "BEDROCK_SMALL_FAST_MODEL": HAIKU, **extra}
    return {prefix + k: v for k, v in env.items()}


def aws_files(home: Path) -> dict[str, str]:
    """The default credential chain's inputs, all local: shared files, no IMDS."""
    credentials = home / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {CHAIN_KEY}\naws_secret_access_key = {CHAIN_SECRET}\n"
                           f"aws_session_token = {CHAIN_TOKEN}\n")
    config = home / "config"
    config.write_text("[default]\nregion = eu-west-1\n")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(config),
            "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(home)}


@pytest.fixture(scope="module")
def gw(fake: FakeBedrock, chain_fake: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("gw-bedrock")
    env = clean_env(
        # Static keys through the ACCESS_KEYS / ACCESS_KEY_SECRETS aliases.
        **bedrock_instance(0, "anthropic-bedrock", fake.base_url, "us-east-1", SONNET,
                           BEDROCK_ACCESS_KEYS=STATIC_KEY, BEDROCK_ACCESS_KEY_SECRETS=STATIC_SECRET),
        # No keys: boto3's default chain (shared credentials file, with a session token).
        **bedrock_instance(1, "bedrock-chain", chain_fake.base_url, "eu-west-1", PROFILE_ARN),
        **bedrock_instance(2, "bedrock-wrong-key", fake.base_url, "us-east-1", SONNET,
                           BEDROCK_ACCESS_KEY=STATIC_KEY, BEDROCK_ACCESS_KEY_SECRET=WRONG_SECRET),
        **aws_files(workdir),
    )
    gateway = Gateway(workdir, env)
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()
    assert not any(secret in gateway.output() for secret in SECRETS)


@pytest.fixture(autouse=True)
def _reset(fake: FakeBedrock, chain_fake: FakeBedrock) -> None:
    fake.reset()
    chain_fake.reset()


# -- helpers ---------------------------------------------------------------------------


def client(gw: Gateway, instance: str = "anthropic-bedrock") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/api/v2/aibridge/{instance}", api_key=gw.user_key,  # type: ignore[attr-defined]
                               max_retries=0)


def tokens(gw: Gateway, iid: str) -> list[dict[str, Any]]:
    rows = gw.query(f"select * from aibridge_token_usages where interception_id = '{iid}'")
    for row in rows:
        row["metadata"] = json.loads(row["metadata"])
    return rows


def only_request(fake: FakeBedrock) -> Received:
    (received,) = fake.wait_for_requests(1)
    assert received.auth_error is None, received.auth_error
    return received


def sse_events(body: str) -> list[dict[str, Any]]:
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        out.append(data)
    return out


def post_messages(gw: Gateway, body: dict[str, Any], instance: str = "anthropic-bedrock",
                  **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/v2/aibridge/{instance}/v1/messages", json=body, trust_env=False, timeout=30,
                      headers={"x-api-key": gw.user_key, "anthropic-version": "2023-06-01", **headers})  # type: ignore[attr-defined]


# -- happy paths -----------------------------------------------------------------------


def test_sdk_stream_is_signed_converted_and_recorded(gw: Gateway, fake: FakeBedrock) -> None:
    before = count(gw)
    with client(gw).messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES,
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14,prompt-caching-scope-2026-01-05"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    assert final.usage.output_tokens == 10

    sent = only_request(fake)
    assert sent.path == f"/model/{SONNET}/invoke-with-response-stream"
    body = sent.json()
    assert "model" not in body and "stream" not in body
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert body["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]  # the unsupported flag is dropped
    assert body["messages"] == MESSAGES
    assert sent.headers["accept"] == "application/vnd.amazon.eventstream"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={STATIC_KEY}/")
    assert not any(h.startswith("anthropic-") or h == "x-api-key" for h in sent.headers)

    row = latest_after(gw, before)
    assert row["provider"] == "anthropic" and row["provider_name"] == "anthropic-bedrock"
    assert row["model"] == "claude-sonnet-4-5"  # what the client asked for
    assert row["status"] == "completed", row
    assert row["metadata"]["bedrock_model_id"] == SONNET
    assert row["credential_kind"] == "centralized"
    (usage,) = tokens(gw, row["id"])
    assert (usage["input_tokens"], usage["output_tokens"]) == (10, 10)
    assert usage["metadata"]["bedrock_invocation_metrics"]["invocationLatency"] == 321
    prompts = gw.query(f"select prompt from aibridge_user_prompts where interception_id = '{row['id']}'")
    assert [p["prompt"] for p in prompts] == ["hi there"]


def test_stream_is_anthropic_sse_relayed_event_by_event(gw: Gateway, fake: FakeBedrock) -> None:
    events = anthropic_events(SONNET)
    frames: list[bytes | float] = [chunk_frame(e) for e in events]
    fake.enqueue(Reply.events([*frames[:3], 1.0, *frames[3:]], split=5))  # 5-byte network chunks
    arrivals: list[tuple[float, str]] = []
    start = time.monotonic()
    with httpx.stream("POST", f"{gw.url}/api/v2/aibridge/anthropic-bedrock/v1/messages", trust_env=False,
                      headers={"x-api-key": gw.user_key}, timeout=30,  # type: ignore[attr-defined]
                      json={"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True,
                            "messages": MESSAGES}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        assert response.headers["request-id"]
        body = ""
        for piece in response.iter_text():
            body += piece
            arrivals.append((time.monotonic() - start, body))
    first_delta_at = next(t for t, seen in arrivals if "content_block_delta" in seen)
    assert first_delta_at < 0.9 < arrivals[-1][0], "events must reach the client as they arrive"
    received = sse_events(body)
    expected = [{k: v for k, v in e.items() if k != "amazon-bedrock-invocationMetrics"} for e in events]
    assert received == expected


def test_blocking_haiku_maps_to_the_small_fast_model(gw: Gateway, fake: FakeBedrock) -> None:
    before = count(gw)
    message = client(gw).messages.create(model="claude-3-5-haiku-latest", max_tokens=10, messages=MESSAGES,
                                         metadata={"user_id": "u1"}, service_tier="auto")
    assert message.content[0].text == TEXT  # type: ignore[union-attr]
    sent = only_request(fake)
    assert sent.path == f"/model/{HAIKU}/invoke"
    assert sent.headers["accept"] == "application/json"
    assert {"metadata", "service_tier", "model", "stream"}.isdisjoint(sent.json())
    row = latest_after(gw, before)
    assert row["model"] == "claude-3-5-haiku-latest"
    assert row["metadata"]["bedrock_model_id"] == HAIKU
    assert row["status"] == "completed"
    (usage,) = tokens(gw, row["id"])
    assert usage["metadata"]["bedrock_token_counts"] == {"input": 10, "output": 10}


@pytest.mark.skipif(txtar.FIXTURES is None, reason=txtar.SKIP_REASON)
def test_simple_bedrock_fixture_request_and_stream(gw: Gateway, fake: FakeBedrock) -> None:
    assert txtar.FIXTURES is not None
    _, sections = txtar.load(txtar.FIXTURES / "anthropic" / "simple_bedrock.txtar")
    expected = sse_events(sections["streaming"])
    fake.enqueue(Reply.events([chunk_frame(e) for e in expected]))
    request = json.loads(sections["request"])
    response = post_messages(gw, request, **{"anthropic-beta": "context-management-2025-06-27,effort-2025-11-24"})
    assert response.status_code == 200
    assert sse_events(response.text) == expected
    body = only_request(fake).json()
    assert {"model", "stream", "metadata", "service_tier", "container", "inference_geo",
            "output_config"}.isdisjoint(body)  # output_config needs the effort beta: Opus 4.5 only
    # Sonnet 4.5 takes the context-management beta, so its field stays.
    assert body["anthropic_beta"] == ["context-management-2025-06-27"]
    assert body["context_management"] == request["context_management"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16000}  # adaptive, effort medium
    assert body["anthropic_version"] == "bedrock-2023-05-31"


def test_default_credential_chain_and_arn_model(gw: Gateway, chain_fake: FakeBedrock) -> None:
    before = count(gw)
    message = client(gw, "bedrock-chain").messages.create(model="claude-opus-4-1", max_tokens=10, messages=MESSAGES)
    assert message.content[0].text == TEXT  # type: ignore[union-attr]
    sent = only_request(chain_fake)  # verified with the chain's key and session token
    assert sent.path == "/model/" + PROFILE_ARN.replace("/", "%2F") + "/invoke"
    assert sent.headers["x-amz-security-token"] == CHAIN_TOKEN
    row = latest_after(gw, before)
    assert row["status"] == "completed" and row["metadata"]["bedrock_model_id"] == PROFILE_ARN


def test_count_tokens_is_translated(gw: Gateway, fake: FakeBedrock) -> None:
    before = count(gw)
    result = client(gw).messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES,
                                              thinking={"type": "enabled", "budget_tokens": 2048})
    assert result.input_tokens == COUNT_TOKENS
    sent = only_request(fake)
    assert sent.path == f"/model/{SONNET}/count-tokens"
    invoke_body = orjson.loads(base64.b64decode(sent.json()["input"]["invokeModel"]["body"]))
    assert invoke_body["messages"] == MESSAGES and invoke_body["max_tokens"] == 2049
    assert "model" not in invoke_body and invoke_body["anthropic_version"] == "bedrock-2023-05-31"
    assert count(gw) == before  # passthrough routes are not interceptions


def test_models_answers_a_clear_error(gw: Gateway, fake: FakeBedrock) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client(gw).models.list()
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "Amazon Bedrock" in err.value.message and SONNET in err.value.message
    assert fake.requests == []


# -- faults ----------------------------------------------------------------------------


def stream_failure(gw: Gateway, fake: FakeBedrock, reply: Reply) -> tuple[anthropic.APIStatusError, dict[str, Any]]:
    before = count(gw)
    fake.enqueue(reply)
    with pytest.raises(anthropic.APIStatusError) as err:  # the error event arrives mid-stream
        with client(gw).messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES) as stream:
            for _ in stream:
                pass
    row = latest_after(gw, before)
    assert row["status"] == "failed", row
    return err.value, row


def start_frames() -> list[bytes | float]:
    return [chunk_frame(e) for e in anthropic_events(SONNET)[:3]]


@pytest.mark.parametrize(("frame", "error_type", "text"), [
    (exception_frame("throttlingException", "Too many requests, please wait"), "rate_limit_error", "Too many"),
    (exception_frame("validationException", "Input is too long"), "invalid_request_error", "too long"),
    (exception_frame("modelStreamErrorException", "Model failed", originalStatusCode=500,
                     originalMessage="boom"), "api_error", "original status 500"),
    (error_frame("InternalFailure", "internal failure"), "api_error", "internal failure"),
])
def test_exception_frames_become_anthropic_error_events(gw: Gateway, fake: FakeBedrock, frame: bytes,
                                                         error_type: str, text: str) -> None:
    error, row = stream_failure(gw, fake, Reply.events([*start_frames(), frame]))
    assert error.body["error"]["type"] == error_type  # type: ignore[index]
    assert text in error.body["error"]["message"]  # type: ignore[index]
    assert text in row["metadata"]["error"]


def test_corrupted_crc_ends_the_stream_with_an_error(gw: Gateway, fake: FakeBedrock) -> None:
    frames = start_frames()
    error, row = stream_failure(gw, fake, Reply.events([*frames[:2], corrupt_crc(frames[2])]))  # type: ignore[arg-type]
    assert error.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "corrupted event stream frame" in row["metadata"]["error"]


def test_stream_cut_mid_frame(gw: Gateway, fake: FakeBedrock) -> None:
    frames = start_frames()
    error, row = stream_failure(gw, fake, Reply.events([*frames[:2], frames[2][:21]]))  # type: ignore[index]
    assert "ended mid-frame" in error.body["error"]["message"]  # type: ignore[index]
    assert "ended mid-frame" in row["metadata"]["error"]


def test_connection_dropped_mid_stream_is_recorded(gw: Gateway, fake: FakeBedrock) -> None:
    before = count(gw)
    fake.enqueue(Reply.events(start_frames(), abort=True))
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
        "POST", f"{gw.url}/api/v2/aibridge/anthropic-bedrock/v1/messages", trust_env=False, timeout=30,
        headers={"x-api-key": gw.user_key},  # type: ignore[attr-defined]
        json={"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True, "messages": MESSAGES},
    ) as response:
        response.read()
    row = latest_after(gw, before)
    assert row["status"] == "failed"


@pytest.mark.parametrize(("reply", "exception", "status", "error_type"), [
    (Reply.aws_error(400, "ValidationException", "messages.0.content: Field required"),
     anthropic.BadRequestError, 400, "invalid_request_error"),
    (Reply.aws_error(400, "ValidationException", "The provided model identifier is invalid."),
     anthropic.NotFoundError, 404, "not_found_error"),
    (Reply.aws_error(403, "AccessDeniedException", "You don't have access to the model"),
     anthropic.PermissionDeniedError, 403, "permission_error"),
    (Reply.aws_error(429, "ThrottlingException", "Too many requests, please wait", retry_after=7),
     anthropic.RateLimitError, 429, "rate_limit_error"),
    (Reply.aws_error(503, "ServiceUnavailableException", "Service unavailable"),
     anthropic.InternalServerError, 503, "overloaded_error"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_aws_errors_are_translated(gw: Gateway, fake: FakeBedrock, reply: Reply, exception: type[Exception],
                                   status: int, error_type: str, stream: bool) -> None:
    before = count(gw)
    fake.enqueue(reply)
    with pytest.raises(exception) as err:
        if stream:
            with client(gw).messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES) as s:
                s.until_done()
        else:
            client(gw).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
    api_error = err.value
    assert isinstance(api_error, anthropic.APIStatusError)
    assert api_error.status_code == status
    assert api_error.body["type"] == "error" and api_error.body["error"]["type"] == error_type  # type: ignore[index]
    if status == 429:
        assert api_error.response.headers["retry-after"] == "7"
    row = latest_after(gw, before)
    assert row["status"] == "failed" and row["metadata"]["http_status"] == status


def test_invalid_signature_is_a_permission_error_without_the_secret(gw: Gateway, fake: FakeBedrock) -> None:
    response = post_messages(gw, {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": MESSAGES},
                             instance="bedrock-wrong-key")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert "signature" in response.json()["error"]["message"]
    assert WRONG_SECRET not in response.text


# -- missing credentials ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw_no_credentials(fake: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("gw-bedrock-nocreds")
    env = clean_env(
        # The legacy variables; no keys and an empty default chain.
        CODER_AIBRIDGE_BEDROCK_REGION="us-east-1", CODER_AIBRIDGE_BEDROCK_BASE_URL=fake.base_url,
        CODER_AIBRIDGE_BEDROCK_MODEL=SONNET, CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL=HAIKU,
        AWS_SHARED_CREDENTIALS_FILE=str(workdir / "none"), AWS_CONFIG_FILE=str(workdir / "none"),
        AWS_EC2_METADATA_DISABLED="true", HOME=str(workdir),
    )
    gateway = Gateway(workdir, env)
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def test_missing_credentials_are_a_clear_502(gw_no_credentials: Gateway, fake: FakeBedrock) -> None:
    gw = gw_no_credentials
    for _ in range(2):  # the gateway keeps serving
        before = count(gw)
        with pytest.raises(anthropic.APIStatusError) as err:
            client(gw, "anthropic").messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
        assert err.value.status_code == 502
        assert err.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        assert "no AWS credentials found" in err.value.message
        row = latest_after(gw, before)
        assert row["status"] == "failed" and "AWS credentials" in row["metadata"]["error"]
    assert fake.requests == []
