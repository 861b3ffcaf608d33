"""Idle timeouts for an Anthropic instance served from Amazon Bedrock (a fake that checks SigV4), and the
event-stream exception frame the gateway sends Bedrock-native clients when their stream goes silent."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from botocore.eventstream import EventStreamBuffer

from addons.chain.timeouts import eventstream_exception
from tests.eventstream_encoder import chunk_frame
from tests.fakes.bedrock import FakeBedrock, Reply, anthropic_events
from tests.gateway_process import Gateway, clean_env, latest_ended_after, settled_count

pytestmark = pytest.mark.e2e

KEY, SECRET = "AKIDTIMEOUTBEDROCK", "timeout-secret-Zq8v0rXw3TtY"
SONNET = "anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    f = FakeBedrock(KEY, SECRET, "us-east-1")
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def gw(fake: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gw-bedrock-timeouts")
    prefix = "CODER_AIBRIDGE_PROVIDER_0_"
    env = clean_env(**{prefix + k: v for k, v in {
        "TYPE": "anthropic", "NAME": "anthropic-bedrock", "BEDROCK_REGION": "us-east-1",
        "BEDROCK_BASE_URL": fake.base_url, "BEDROCK_MODEL": SONNET, "BEDROCK_SMALL_FAST_MODEL": SONNET,
        "BEDROCK_ACCESS_KEY": KEY, "BEDROCK_ACCESS_KEY_SECRET": SECRET}.items()},
        CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT="1s", AWS_EC2_METADATA_DISABLED="true")
    gateway = Gateway(workdir, env)
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def test_bedrock_stream_hanging_midway_ends_with_an_anthropic_error_event(gw: Gateway, fake: FakeBedrock) -> None:
    frames: list[bytes | float] = [chunk_frame(e) for e in anthropic_events(SONNET)]
    fake.enqueue(Reply.events([*frames[:3], 2.5, *frames[3:]]))  # silent for longer than the 1 s limit
    before = settled_count(gw)
    client = anthropic.Anthropic(base_url=f"{gw.url}/api/v2/aibridge/anthropic-bedrock",
                                 api_key=gw.user_key, max_retries=0, timeout=30)  # type: ignore[attr-defined]
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught, client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hang?"}]) as stream:
        texts.extend(stream.text_stream)
    assert texts  # what came before the silence reached the client
    assert "upstream timeout after 1s" in str(caught.value)
    row = latest_ended_after(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream timeout after 1s")
    usage = gw.wait_for(f"select * from aibridge_token_usages where interception_id = '{row['id']}'")
    assert usage and usage[0]["input_tokens"] == 10  # from message_start, before the silence


def test_native_clients_get_an_event_stream_exception_botocore_reads() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(eventstream_exception("modelTimeoutException", "upstream timeout after 1s"))
    (message,) = list(buffer)
    response = message.to_response_dict()
    assert response["headers"][":message-type"] == "exception"
    assert response["headers"][":exception-type"] == "modelTimeoutException"
    assert b"upstream timeout after 1s" in response["body"]
