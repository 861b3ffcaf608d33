"""Bedrock-native clients through the transparent proxy, end to end.

boto3's bedrock-runtime client and the Anthropic SDK's AnthropicBedrock use
HTTPS_PROXY-style proxying through a real gateway subprocess:

- bedrock-runtime.us-east-1.amazonaws.com is claimed by no instance: requests go
  there with the client's own SigV4 signature (BYOK). In the gateway process that
  name resolves to a TLS FakeBedrock on 127.0.0.1 (a test-only resolver override
  loaded through sitecustomize), which verifies the client's signature.
- bedrock-runtime.us-west-2.amazonaws.com is claimed by the `bedrock-central`
  instance (its region): the gateway re-signs with the instance's keys and sends
  the request to the instance's FakeBedrock (centralized).

Nothing contacts AWS.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

from addons.upstreams.aws import sign
from tests.eventstream_encoder import chunk_frame, converse_frame
from tests.fakes.bedrock import COUNT_TOKENS, TEXT, FakeBedrock, Reply, anthropic_events
from tests.fakes.tls import Pki
from tests.gateway_process import Gateway, clean_env, start_proxy_gateway
from tests.gateway_process import latest_ended_after as latest_after
from tests.gateway_process import settled_count as count

pytestmark = pytest.mark.e2e

BYOK_HOST = "bedrock-runtime.us-east-1.amazonaws.com"
CENTRAL_HOST = "bedrock-runtime.us-west-2.amazonaws.com"
CONTROL_HOST = "bedrock.us-east-1.amazonaws.com"  # an AWS host that is not the runtime: tunnelled
CLIENT_KEY, CLIENT_SECRET = "AKIDCLIENTOWNKEY0001", "client-own-secret-aa11"
CENTRAL_KEY, CENTRAL_SECRET = "AKIDCENTRALINSTANCE1", "central-secret-bb22"
MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

SITECUSTOMIZE = '''
# Test-only resolver override for the gateway process (like curl --resolve).
import os
import socket

_MAP = {}
for _entry in os.environ.get("AIGW_TEST_RESOLVE", "").split(","):
    _host, _, _ip = _entry.partition("=")
    if _ip:
        _MAP[_host.lower()] = _ip
if _MAP:
    _real_getaddrinfo = socket.getaddrinfo

    def _getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.lower() in _MAP:
            host = _MAP[host.lower()]
        return _real_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = _getaddrinfo
'''


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-bedrock"))


@pytest.fixture(scope="module")
def byok_fake(pki: Pki) -> Iterator[FakeBedrock]:
    fake = FakeBedrock(CLIENT_KEY, CLIENT_SECRET, "us-east-1", ssl_context=pki.server_context(BYOK_HOST))
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def central_fake() -> Iterator[FakeBedrock]:
    fake = FakeBedrock(CENTRAL_KEY, CENTRAL_SECRET, "us-west-2")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def control_fake(pki: Pki) -> Iterator[FakeBedrock]:
    fake = FakeBedrock(ssl_context=pki.server_context(CONTROL_HOST))
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _reset(byok_fake: FakeBedrock, central_fake: FakeBedrock) -> None:
    byok_fake.reset()
    central_fake.reset()


@pytest.fixture(scope="module")
def gw(pki: Pki, byok_fake: FakeBedrock, central_fake: FakeBedrock, control_fake: FakeBedrock,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("gw-bedrock-proxy")
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    p = "CODER_AIBRIDGE_PROVIDER_0_"
    env = clean_env(**{
        f"{p}TYPE": "anthropic", f"{p}NAME": "bedrock-central", f"{p}BEDROCK_REGION": "us-west-2",
        f"{p}BEDROCK_BASE_URL": central_fake.base_url, f"{p}BEDROCK_MODEL": SONNET,
        f"{p}BEDROCK_SMALL_FAST_MODEL": SONNET, f"{p}BEDROCK_ACCESS_KEY": CENTRAL_KEY,
        f"{p}BEDROCK_ACCESS_KEY_SECRET": CENTRAL_SECRET,
        "CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS": "127.0.0.0/8",
        "AIGW_TEST_RESOLVE": f"{BYOK_HOST}=127.0.0.1,{CONTROL_HOST}=127.0.0.1",
        "PYTHONPATH": str(site),
    })
    gateway = start_proxy_gateway(workdir, env, pki.ca_path, [byok_fake.port, control_fake.port])
    yield gateway
    gateway.stop()
    assert CLIENT_SECRET not in gateway.output() and CENTRAL_SECRET not in gateway.output()


# -- helpers -------------------------------------------------------------------------------


def proxy_url(gw: Gateway) -> str:
    return f"http://aigw:{gw.user_key}@127.0.0.1:{gw.port}"  # type: ignore[attr-defined]


def gateway_ca(gw: Gateway) -> str:
    return str(gw.workdir / "certs" / "mitmproxy-ca-cert.pem")


def bedrock(gw: Gateway, byok_fake: FakeBedrock | None = None, region: str = "us-east-1") -> Any:
    """boto3's bedrock-runtime client through the proxy; BYOK host (own keys) unless `byok_fake` is None."""
    endpoint = f"https://{BYOK_HOST}:{byok_fake.port}" if byok_fake is not None else None
    key, secret = (CLIENT_KEY, CLIENT_SECRET) if byok_fake is not None else ("AKIDDUMMY", "dummy")
    return boto3.client(
        "bedrock-runtime", region_name=region, endpoint_url=endpoint, verify=gateway_ca(gw),
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(proxies={"https": proxy_url(gw)}, retries={"total_max_attempts": 1, "mode": "standard"}))


def children(gw: Gateway, table: str, iid: str) -> list[dict[str, Any]]:
    return gw.query(f"select * from {table} where interception_id = '{iid}' order by created_at")


def usage(gw: Gateway, iid: str) -> tuple[int, int, int, int, dict[str, Any]]:
    (row,) = children(gw, "aibridge_token_usages", iid)
    return (row["input_tokens"], row["output_tokens"], row["cache_read_input_tokens"],
            row["cache_write_input_tokens"], json.loads(row["metadata"]))


BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello bedrock"}]}


# -- BYOK: the client's own signature ------------------------------------------------------------


def test_boto3_invoke_stream_byok_is_recorded(gw: Gateway, byok_fake: FakeBedrock) -> None:
    before = count(gw)
    response = bedrock(gw, byok_fake).invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(BODY))
    events = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    assert [e["type"] for e in events] == [e["type"] for e in anthropic_events(MODEL)]
    assert "amazon-bedrock-invocationMetrics" in events[-1]  # relayed as Bedrock sent it

    (sent,) = byok_fake.requests
    assert sent.auth_error is None  # the client's signature arrived intact
    assert (sent.model_id, sent.operation) == (MODEL, "invoke-with-response-stream")
    assert "proxy-authorization" not in sent.headers

    row = latest_after(gw, before)
    assert (row["provider"], row["provider_name"], row["model"]) == ("bedrock", "bedrock", MODEL)
    assert row["status"] == "completed", row
    assert row["credential_kind"] == "byok" and row["credential_hint"] == "AKID…0001"
    assert row["client"] == "boto3" and row["metadata"]["mode"] == "proxy"
    assert row["metadata"]["route"] == "/model/{id}/invoke-with-response-stream"
    tokens = usage(gw, row["id"])
    assert tokens[:2] == (10, 10) and tokens[4]["bedrock_invocation_metrics"]["invocationLatency"] == 321
    assert [p["prompt"] for p in children(gw, "aibridge_user_prompts", row["id"])] == ["hello bedrock"]


def test_event_stream_is_relayed_byte_for_byte(gw: Gateway, byok_fake: FakeBedrock) -> None:
    frames = [chunk_frame(e, padding=i) for i, e in enumerate(anthropic_events(MODEL))]
    byok_fake.enqueue(Reply.events(list(frames), split=9))
    url = f"https://{BYOK_HOST}:{byok_fake.port}/model/{MODEL}/invoke-with-response-stream"
    body = json.dumps(BODY).encode()
    headers = {"content-type": "application/json", "accept": "application/vnd.amazon.eventstream"}
    headers |= sign(url, body, headers, ReadOnlyCredentials(CLIENT_KEY, CLIENT_SECRET, None), "us-east-1")
    with httpx.Client(proxy=proxy_url(gw), verify=ssl.create_default_context(cafile=gateway_ca(gw)),
                      trust_env=False, timeout=20) as client:
        response = client.post(url, content=body, headers=headers)
    assert response.status_code == 200
    assert response.content == b"".join(frames)
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"


def test_boto3_converse_stream_tools_and_reasoning(gw: Gateway, byok_fake: FakeBedrock) -> None:
    byok_fake.enqueue(Reply.events([
        converse_frame("messageStart", {"role": "assistant"}),
        converse_frame("contentBlockDelta", {"contentBlockIndex": 0,
                                             "delta": {"reasoningContent": {"text": "Need the weather."}}}),
        converse_frame("contentBlockDelta", {"contentBlockIndex": 0,
                                             "delta": {"reasoningContent": {"signature": "sig"}}}),
        converse_frame("contentBlockStop", {"contentBlockIndex": 0}),
        converse_frame("contentBlockStart", {"contentBlockIndex": 1, "start": {
            "toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
        converse_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}}),
        converse_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}}),
        converse_frame("contentBlockStop", {"contentBlockIndex": 1}),
        converse_frame("messageStop", {"stopReason": "tool_use"}),
        converse_frame("metadata", {"usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 50,
                                              "cacheReadInputTokens": 8}, "metrics": {"latencyMs": 99}}),
    ]))
    before = count(gw)
    response = bedrock(gw, byok_fake).converse_stream(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "weather in Paris?"}]}],
        toolConfig={"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]})
    kinds = [next(iter(event)) for event in response["stream"]]
    assert kinds[0] == "messageStart" and kinds[-1] == "metadata"

    row = latest_after(gw, before)
    assert row["status"] == "completed" and row["model"] == MODEL, row
    assert usage(gw, row["id"])[:3] == (30, 12, 8)
    tools = children(gw, "aibridge_tool_usages", row["id"])
    assert [(t["provider_tool_call_id"], t["tool"], json.loads(t["input"])) for t in tools] == [
        ("tooluse_1", "get_weather", {"city": "Paris"})]
    assert [t["content"] for t in children(gw, "aibridge_model_thoughts", row["id"])] == ["Need the weather."]
    assert [p["prompt"] for p in children(gw, "aibridge_user_prompts", row["id"])] == ["weather in Paris?"]


def test_boto3_blocking_invoke_and_converse(gw: Gateway, byok_fake: FakeBedrock) -> None:
    client = bedrock(gw, byok_fake)
    before = count(gw)
    body = json.loads(client.invoke_model(modelId=MODEL, body=json.dumps(BODY))["body"].read())
    assert body["content"][0]["text"] == TEXT
    row = latest_after(gw, before)
    assert row["status"] == "completed" and row["metadata"]["route"] == "/model/{id}/invoke"
    tokens = usage(gw, row["id"])
    assert tokens[:2] == (10, 10) and tokens[4]["bedrock_token_counts"] == {"input": 10, "output": 10}

    before = count(gw)
    output = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert output["output"]["message"]["content"][0]["text"] == TEXT
    row = latest_after(gw, before)
    assert row["status"] == "completed" and row["metadata"]["route"] == "/model/{id}/converse"
    assert usage(gw, row["id"])[:2] == (10, 10)


def test_native_errors_are_relayed_as_aws_errors_and_recorded(gw: Gateway, byok_fake: FakeBedrock) -> None:
    byok_fake.enqueue(Reply.aws_error(429, "ThrottlingException", "Too many requests, please wait", retry_after=4))
    client = bedrock(gw, byok_fake)
    before = count(gw)
    with pytest.raises(client.exceptions.ThrottlingException) as err:
        client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert err.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "4"
    row = latest_after(gw, before)
    assert row["status"] == "failed" and "Too many requests" in row["metadata"]["error"]


def test_unsigned_byok_request_is_refused_in_aws_shape(gw: Gateway, byok_fake: FakeBedrock) -> None:
    with httpx.Client(proxy=proxy_url(gw), verify=ssl.create_default_context(cafile=gateway_ca(gw)),
                      trust_env=False, timeout=20) as client:
        response = client.post(f"https://{BYOK_HOST}:{byok_fake.port}/model/{MODEL}/converse", json={})
    assert response.status_code == 401
    assert response.json()["__type"] == "UnrecognizedClientException"
    assert byok_fake.requests == []


def test_count_tokens_is_relayed_not_recorded(gw: Gateway, byok_fake: FakeBedrock) -> None:
    before = count(gw)
    result = bedrock(gw, byok_fake).count_tokens(modelId=MODEL, input={"invokeModel": {"body": json.dumps(BODY)}})
    assert result["inputTokens"] == COUNT_TOKENS
    assert byok_fake.requests[0].auth_error is None
    assert count(gw) == before


# -- centralized: an instance claims the host --------------------------------------------------


def test_boto3_centralized_is_resigned_with_the_instance_keys(gw: Gateway, central_fake: FakeBedrock) -> None:
    before = count(gw)
    response = bedrock(gw, region="us-west-2").converse_stream(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert [next(iter(e)) for e in response["stream"]][-1] == "metadata"
    (sent,) = central_fake.requests
    assert sent.auth_error is None  # verified with the instance's keys, not the client's dummy ones
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={CENTRAL_KEY}/")
    row = latest_after(gw, before)
    assert (row["provider_name"], row["credential_kind"], row["status"]) == (
        "bedrock-central", "centralized", "completed")
    assert usage(gw, row["id"])[:2] == (10, 10)


def test_anthropic_bedrock_sdk_through_the_proxy(gw: Gateway, central_fake: FakeBedrock) -> None:
    client = anthropic.AnthropicBedrock(
        aws_region="us-west-2", aws_access_key="AKIDDUMMY", aws_secret_key="dummy", max_retries=0,
        http_client=anthropic.DefaultHttpxClient(proxy=proxy_url(gw), verify=ssl.create_default_context(
            cafile=gateway_ca(gw)), trust_env=False))
    before = count(gw)
    with client.messages.stream(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as s:
        assert "".join(s.text_stream) == TEXT
    assert central_fake.requests[0].path == f"/model/{MODEL}/invoke-with-response-stream"
    row = latest_after(gw, before)
    assert row["status"] == "completed" and row["model"] == MODEL and row["client"] == "Anthropic SDK (Python)"
    assert usage(gw, row["id"])[:2] == (10, 10)


# -- everything else on AWS is tunnelled -----------------------------------------------------


def test_other_aws_hosts_are_tunnelled_untouched(gw: Gateway, pki: Pki, control_fake: FakeBedrock) -> None:
    # Trusting only the test CA works only if the client talks TLS with the origin itself.
    with httpx.Client(proxy=proxy_url(gw), verify=ssl.create_default_context(cafile=str(pki.ca_path)),
                      trust_env=False, timeout=20) as client:
        response = client.get(f"https://{CONTROL_HOST}:{control_fake.port}/foundation-models")
    assert response.status_code == 403  # the fake's own answer to an unsigned request
    assert control_fake.requests[0].path == "/foundation-models"
