"""The fake Bedrock runtime, driven by a real boto3 `bedrock-runtime` client."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import orjson
import pytest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.eventstream import ChecksumMismatch
from botocore.exceptions import ClientError, EventStreamError, ResponseStreamingError
from urllib3.exceptions import ProtocolError

from addons.upstreams.aws import sign
from tests.eventstream_encoder import chunk_frame, converse_frame, corrupt_crc, exception_frame
from tests.fakes.bedrock import FakeBedrock, Reply, anthropic_events

ACCESS_KEY, SECRET_KEY, REGION = "AKIDFAKETEST", "fake-test-secret", "us-west-2"
MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
BODY = orjson.dumps(
    {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
)


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    server = FakeBedrock(ACCESS_KEY, SECRET_KEY, REGION)
    server.start()
    yield server
    server.stop()


def client(fake: FakeBedrock, secret: str = SECRET_KEY, **extra: Any) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.base_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
        **extra,
    )


def test_invoke_model(fake: FakeBedrock) -> None:
    response = client(fake).invoke_model(modelId=MODEL, body=BODY)
    message = orjson.loads(response["body"].read())
    assert message["type"] == "message" and message["content"][0]["type"] == "text"
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"] == "10"
    (seen,) = fake.requests
    assert (seen.operation, seen.model_id, seen.auth_error) == ("invoke", MODEL, None)
    assert seen.body == BODY and seen.path == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"


def test_invoke_model_with_response_stream(fake: FakeBedrock) -> None:
    response = client(fake).invoke_model_with_response_stream(modelId=MODEL, body=BODY)
    events = [orjson.loads(e["chunk"]["bytes"]) for e in response["body"]]
    assert [e["type"] for e in events] == [e["type"] for e in anthropic_events(MODEL)]
    assert "amazon-bedrock-invocationMetrics" in events[-1]


def test_converse_and_converse_stream(fake: FakeBedrock) -> None:
    c = client(fake)
    messages = [{"role": "user", "content": [{"text": "hi"}]}]
    blocking = c.converse(modelId=MODEL, messages=messages)
    assert blocking["output"]["message"]["content"] == [{"text": "Hello! How can I help?"}]
    streamed = list(c.converse_stream(modelId=MODEL, messages=messages)["stream"])
    assert [next(iter(e)) for e in streamed] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert streamed[-1]["metadata"]["usage"]["totalTokens"] == 20
    assert [r.operation for r in fake.requests] == ["converse", "converse-stream"]
    assert orjson.loads(fake.requests[0].body)["messages"] == messages


def test_wrong_signature_is_403(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as info:
        client(fake, secret="not-the-secret").invoke_model(modelId=MODEL, body=BODY)
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert "signature we calculated does not match" in error["Error"]["Message"]
    assert fake.requests[0].auth_error is not None


def test_unknown_key_and_missing_token(fake: FakeBedrock) -> None:
    other = boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.base_url,
        region_name=REGION,
        aws_access_key_id="AKIDOTHER",
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ClientError, match="UnrecognizedClientException"):
        other.invoke_model(modelId=MODEL, body=BODY)

    with_token = FakeBedrock(ACCESS_KEY, SECRET_KEY, REGION, session_token="the-session-token")
    with_token.start()
    try:
        with pytest.raises(ClientError, match="UnrecognizedClientException"):
            client(with_token).invoke_model(modelId=MODEL, body=BODY)
        ok = client(with_token, aws_session_token="the-session-token").invoke_model(modelId=MODEL, body=BODY)
        assert ok["ResponseMetadata"]["HTTPStatusCode"] == 200
    finally:
        with_token.stop()


def test_scripted_stream_with_delays_and_exception(fake: FakeBedrock) -> None:
    events = anthropic_events(MODEL)
    fake.enqueue(
        Reply.events(
            [
                chunk_frame(events[0]),
                0.2,
                chunk_frame(events[1]),
                exception_frame("throttlingException", "Too many tokens, please wait."),
            ],
            split=5,
        )
    )
    started = time.monotonic()
    stream = client(fake).invoke_model_with_response_stream(modelId=MODEL, body=BODY)["body"]
    got = []
    with pytest.raises(EventStreamError, match="Too many tokens"):
        for e in stream:
            got.append(orjson.loads(e["chunk"]["bytes"])["type"])
    assert got == ["message_start", "content_block_start"]
    assert time.monotonic() - started >= 0.2


def test_scripted_corrupted_crc(fake: FakeBedrock) -> None:
    fake.enqueue(Reply.events([chunk_frame(anthropic_events(MODEL)[0]), corrupt_crc(chunk_frame({"type": "ping"}))]))
    stream = client(fake).invoke_model_with_response_stream(modelId=MODEL, body=BODY)["body"]
    with pytest.raises(ChecksumMismatch):
        list(stream)


def test_scripted_cut_mid_frame(fake: FakeBedrock) -> None:
    frame = converse_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "partial"}})
    fake.enqueue(Reply.events([converse_frame("messageStart", {"role": "assistant"}), frame[:11]]))
    stream = client(fake).converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
    # botocore stops at the partial frame without raising: the event just never arrives.
    assert [next(iter(e)) for e in stream["stream"]] == ["messageStart"]


def test_scripted_abort(fake: FakeBedrock) -> None:
    fake.enqueue(Reply.events([chunk_frame(anthropic_events(MODEL)[0])], abort=True))
    stream = client(fake).invoke_model_with_response_stream(modelId=MODEL, body=BODY)["body"]
    # botocore surfaces the cut body as urllib3's ProtocolError (or its wrapper).
    with pytest.raises((ResponseStreamingError, ProtocolError)):
        list(stream)


def test_scripted_http_errors(fake: FakeBedrock) -> None:
    fake.enqueue(
        Reply.aws_error(429, "ThrottlingException", "Too many requests, please wait.", retry_after=3),
        Reply.aws_error(400, "ValidationException", "The provided model identifier is invalid."),
    )
    c = client(fake)
    with pytest.raises(c.exceptions.ThrottlingException) as throttled:
        c.invoke_model(modelId=MODEL, body=BODY)
    assert throttled.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"
    with pytest.raises(c.exceptions.ValidationException, match="model identifier is invalid"):
        c.invoke_model(modelId=MODEL, body=BODY)
    assert len(fake.wait_for_requests(2)) == 2


def test_unsigned_and_unknown_routes(fake: FakeBedrock) -> None:
    assert httpx.post(f"{fake.base_url}/model/x/invoke", content=b"{}").status_code == 403
    assert fake.requests[0].auth_error == "MissingAuthenticationTokenException: Missing Authentication Token"
    url = f"{fake.base_url}/model/x/no-such-operation"
    headers = sign(url, b"{}", {}, ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, None), REGION)
    response = httpx.post(url, content=b"{}", headers=headers)
    assert response.status_code == 404 and response.headers["x-amzn-errortype"].startswith("UnknownOperation")
    fake.reset()
    assert fake.requests == []
