"""Upstream connect and idle timeouts, end to end: a real gateway (1 s limits) against upstreams that hang."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.fakes.faulty import Blackhole, Mute
from tests.fakes.upstream import FakeUpstream, Gate, Reply, anthropic_events, chat_chunks, responses_events
from tests.gateway_process import Gateway, clean_env, provider_env, settled_count

pytestmark = pytest.mark.e2e

LIMIT = 1.0
PROMPT = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hang?"}]}


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def mute() -> Iterator[Mute]:
    server = Mute()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, blackhole: Blackhole, mute: Mute,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("timeouts")
    env = clean_env(**provider_env(upstream.url),
                    CODER_AIBRIDGE_PROVIDER_6_TYPE="anthropic", CODER_AIBRIDGE_PROVIDER_6_NAME="mute",
                    CODER_AIBRIDGE_PROVIDER_6_KEY="sk-ant-mute-0000000000", CODER_AIBRIDGE_PROVIDER_6_BASE_URL=mute.url,
                    CODER_AIBRIDGE_PROVIDER_5_TYPE="anthropic", CODER_AIBRIDGE_PROVIDER_5_NAME="blackhole",
                    CODER_AIBRIDGE_PROVIDER_5_KEY="sk-ant-blackhole-0000000000",
                    CODER_AIBRIDGE_PROVIDER_5_BASE_URL=blackhole.url,
                    CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT="1s", CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT="1s")
    gateway = Gateway(workdir, env)
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def gates() -> Iterator[list[Gate]]:
    """Gates a test hangs the upstream on; opened afterwards so the fake's threads finish."""
    made: list[Gate] = []
    yield made
    for gate in made:
        gate.open()


def hang(gates: list[Gate]) -> Gate:
    gate = Gate(timeout=30)
    gates.append(gate)
    return gate


def recorded(gw: Gateway, before: int) -> dict:
    rows = gw.wait_for("select * from aibridge_interceptions where ended_at is not null order by started_at",
                       lambda r: len(r) > before)
    assert len(rows) == before + 1, rows[before:]
    row = rows[-1]
    row["metadata"] = json.loads(row["metadata"])
    return row


def tokens(gw: Gateway, iid: str) -> list[dict]:
    return gw.wait_for(f"select * from aibridge_token_usages where interception_id = '{iid}'")


def anthropic_client(gw: Gateway, instance: str = "anthropic") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/api/v2/aibridge/{instance}", api_key=gw.user_key,  # type: ignore[attr-defined]
                               max_retries=0, timeout=30)


def openai_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/api/v2/aibridge/openai/v1", api_key=gw.user_key,  # type: ignore[attr-defined]
                         max_retries=0, timeout=30)


def sse_reply(chunks: list[bytes | Gate]) -> Reply:
    return Reply(headers={"content-type": "text/event-stream"}, chunks=chunks)


def test_hang_before_headers_is_a_504_in_anthropic_shape(gw: Gateway, upstream: FakeUpstream,
                                                          gates: list[Gate]) -> None:
    before = settled_count(gw)
    upstream.queue(Reply(head_gate=hang(gates)))
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(gw).messages.create(**PROMPT)
    assert time.monotonic() - started >= LIMIT
    assert caught.value.status_code == 504
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "timeout_error"
    assert "upstream timeout after 1s" in error["message"] and "'anthropic'" in error["message"]
    row = recorded(gw, before)
    assert row["status"] == "failed"
    assert row["metadata"]["error"] == "upstream timeout after 1s"
    assert row["metadata"]["http_status"] == 504
    # The next request on a fresh connection works.
    upstream.reset()
    assert anthropic_client(gw).messages.create(**PROMPT).content[0].text  # type: ignore[union-attr]


def test_hang_before_headers_is_a_504_in_openai_shape(gw: Gateway, upstream: FakeUpstream,
                                                       gates: list[Gate]) -> None:
    before = settled_count(gw)
    upstream.queue(Reply(head_gate=hang(gates)))
    response = httpx.post(f"{gw.url}/api/v2/aibridge/openai/v1/chat/completions", timeout=30, trust_env=False,
                          headers={"authorization": f"Bearer {gw.user_key}"},  # type: ignore[attr-defined]
                          json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hang?"}]})
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["type"] == "server_error" and "upstream timeout after 1s" in error["message"]
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream timeout after 1s")


def test_anthropic_stream_hanging_midway_ends_with_an_error_event(gw: Gateway, upstream: FakeUpstream,
                                                                  gates: list[Gate]) -> None:
    before = settled_count(gw)
    events = anthropic_events(PROMPT)
    upstream.queue(sse_reply([*events[:4], hang(gates), *events[4:]]))
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with anthropic_client(gw).messages.stream(**PROMPT) as stream:
            texts.extend(stream.text_stream)
    assert texts == ["Hello "]
    assert "upstream timeout after 1s" in str(caught.value)
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream timeout after 1s")
    usage = tokens(gw, row["id"])
    assert usage and usage[0]["input_tokens"] == 25  # what message_start said is kept


def test_anthropic_stream_over_httpx_ends_cleanly_after_the_error_event(gw: Gateway, upstream: FakeUpstream,
                                                                        gates: list[Gate]) -> None:
    events = anthropic_events(PROMPT)
    upstream.queue(sse_reply([*events[:3], hang(gates), *events[3:]]))
    with httpx.stream("POST", f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", timeout=30, trust_env=False,
                      headers={"x-api-key": gw.user_key},  # type: ignore[attr-defined]
                      json={**PROMPT, "stream": True}) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_raw())  # raises if the chunked body is cut
    last = body.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error\ndata: ")
    error = json.loads(last.split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "upstream timeout after 1s" in error["error"]["message"]


def test_chat_stream_hanging_midway(gw: Gateway, upstream: FakeUpstream, gates: list[Gate]) -> None:
    before = settled_count(gw)
    body = {"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "hang?"}]}
    chunks = chat_chunks({**body, "stream_options": {"include_usage": True}})
    upstream.queue(sse_reply([*chunks[:3], hang(gates), *chunks[3:]]))
    with pytest.raises(openai.APIError) as caught:
        for _ in openai_client(gw).chat.completions.create(**body):
            pass
    assert "upstream timeout after 1s" in caught.value.message
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream timeout after 1s")


def test_responses_stream_hanging_midway(gw: Gateway, upstream: FakeUpstream, gates: list[Gate]) -> None:
    before = settled_count(gw)
    body = {"model": "gpt-5", "stream": True, "input": "hang?"}
    events = responses_events(body)
    upstream.queue(sse_reply([*events[:3], hang(gates), *events[3:]]))
    with httpx.stream("POST", f"{gw.url}/api/v2/aibridge/openai/v1/responses", timeout=30, trust_env=False,
                      headers={"authorization": f"Bearer {gw.user_key}"}, json=body) as response:  # type: ignore[attr-defined]
        raw = b"".join(response.iter_raw())
    last = raw.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error\ndata: ")
    error = json.loads(last.split(b"data: ", 1)[1])
    assert error["type"] == "error" and "upstream timeout after 1s" in error["message"]
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream timeout after 1s")


def test_a_stream_that_keeps_talking_outlives_the_idle_limit(gw: Gateway, upstream: FakeUpstream) -> None:
    before = settled_count(gw)
    events = anthropic_events(PROMPT)
    pauses = [Gate(timeout=0.4) for _ in range(4)]  # never opened: 0.4 s of silence each, 1.6 s in all
    chunks: list[bytes | Gate] = []
    for i, event in enumerate(events):
        chunks.append(event)
        if i < len(pauses):
            chunks.append(pauses[i])
    upstream.queue(sse_reply(chunks))
    with anthropic_client(gw).messages.stream(**PROMPT) as stream:
        text = "".join(stream.text_stream)
    assert text.strip() == "Hello from the fake upstream."
    assert recorded(gw, before)["status"] == "completed"


def test_connect_timeout(gw: Gateway, blackhole: Blackhole) -> None:
    if not blackhole.hangs():
        pytest.skip("this kernel answers connects past a full accept queue")
    before = settled_count(gw)
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(gw, "blackhole").messages.create(**PROMPT)
    assert time.monotonic() - started >= LIMIT
    assert caught.value.status_code == 504
    assert "upstream connect timeout after 1s: instance 'blackhole'" in str(caught.value)
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream connect timeout after 1s")


def test_connect_refused(gw: Gateway) -> None:
    before = settled_count(gw)
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(gw, "dead").messages.create(**PROMPT)
    assert caught.value.status_code == 502
    row = recorded(gw, before)
    assert row["status"] == "failed" and "connect" in row["metadata"]["error"].lower()


def test_blocking_body_hanging_midway(gw: Gateway, upstream: FakeUpstream, gates: list[Gate]) -> None:
    before = settled_count(gw)
    upstream.queue(Reply(chunks=[b'{"id": "msg_1", "type": "mess', hang(gates), b'age"}']))
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(gw).messages.create(**PROMPT)
    assert caught.value.status_code == 502  # nothing reached the client yet: the gateway's own error
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream timeout after 1s")


def test_passthrough_route_hanging_before_headers(gw: Gateway, upstream: FakeUpstream, gates: list[Gate]) -> None:
    upstream.queue(Reply(head_gate=hang(gates)))
    response = httpx.get(f"{gw.url}/api/v2/aibridge/anthropic/v1/models", timeout=30, trust_env=False,
                         headers={"x-api-key": gw.user_key})  # type: ignore[attr-defined]
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"


def test_tls_handshake_timeout(gw: Gateway) -> None:
    before = settled_count(gw)
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(gw, "mute").messages.create(**PROMPT)
    assert time.monotonic() - started >= LIMIT
    assert caught.value.status_code == 502
    row = recorded(gw, before)
    assert (row["status"], row["metadata"]["error"]) == ("failed", "upstream connect timeout after 1s")
