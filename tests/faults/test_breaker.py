"""The circuit breaker end to end: bursts of upstream failures trip it, it rejects without reaching the
upstream, half-open probes close or reopen it; its metrics and interception rows say so."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import FakeUpstream, Gate, Reply, json_reply
from tests.gateway_process import Gateway, clean_env, free_port, latest_ended_after, provider_env, settled_count

pytestmark = pytest.mark.e2e

THRESHOLD = 3
OPEN_FOR = 2.0  # the breaker's timeout: short, so half-open comes quickly
PROBES = 2


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("breaker")
    metrics_port = free_port()
    env = clean_env(**provider_env(upstream.url),
                    CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED="true",
                    CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD=str(THRESHOLD),
                    CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL="30s",
                    CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT=f"{OPEN_FOR:g}s",
                    CODER_AIBRIDGE_CIRCUIT_BREAKER_MAX_REQUESTS=str(PROBES),
                    CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT="2s",  # held probes answer well within it
                    CODER_PROMETHEUS_ENABLE="true", CODER_PROMETHEUS_ADDRESS=f"127.0.0.1:{metrics_port}")
    gateway = Gateway(workdir, env)
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def anthropic_client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/api/v2/aibridge/anthropic", api_key=gw.user_key,  # type: ignore[attr-defined]
                               max_retries=0, timeout=30)


def openai_client(gw: Gateway, instance: str = "openai") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/api/v2/aibridge/{instance}/v1", api_key=gw.user_key,  # type: ignore[attr-defined]
                         max_retries=0, timeout=30)


def ask(gw: Gateway, model: str) -> anthropic.APIStatusError | None:
    """One blocking Messages request; the error the client got, or None."""
    try:
        anthropic_client(gw).messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    except anthropic.APIStatusError as e:
        return e
    return None


def overloaded(status: int = 503) -> Reply:
    return json_reply({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, status)


def metric(gw: Gateway, name: str, **labels: str) -> float | None:
    text = httpx.get(gw.metrics_url, timeout=10, trust_env=False).text  # type: ignore[attr-defined]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def labels(model: str, provider: str = "anthropic", endpoint: str = "/v1/messages") -> dict[str, str]:
    return {"provider": provider, "endpoint": endpoint, "model": model}


def trip(gw: Gateway, upstream: FakeUpstream, model: str, status: int = 503) -> None:
    for _ in range(THRESHOLD):
        upstream.queue(overloaded(status))
        error = ask(gw, model)
        assert error is not None and error.status_code == status  # the upstream's own answer
    assert metric(gw, "coder_aibridged_circuit_breaker_state", **labels(model)) == 1.0


def test_a_503_burst_opens_it_and_it_rejects_without_reaching_the_upstream(gw: Gateway,
                                                                          upstream: FakeUpstream) -> None:
    model = "claude-burst-503"
    assert ask(gw, model) is None  # a success first: the failures that follow are consecutive
    before = settled_count(gw) + THRESHOLD
    trip(gw, upstream, model)
    seen = len(upstream.requests)
    error = ask(gw, model)
    assert error is not None and error.status_code == 503
    assert error.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert "circuit breaker" in error.body["error"]["message"]  # type: ignore[index]
    assert 1 <= int(error.response.headers["retry-after"]) <= OPEN_FOR
    assert len(upstream.requests) == seen  # never contacted
    row = latest_ended_after(gw, before)
    assert row["status"] == "failed"
    assert row["metadata"]["circuit_breaker"] == "open"
    assert "circuit breaker" in row["metadata"]["error"]
    assert metric(gw, "coder_aibridged_circuit_breaker_trips_total", **labels(model)) == 1.0
    assert metric(gw, "coder_aibridged_circuit_breaker_rejects_total", **labels(model)) == 1.0
    # Another model on the same endpoint has its own breaker.
    assert ask(gw, "claude-other-model") is None


def test_half_open_probes_close_it(gw: Gateway, upstream: FakeUpstream) -> None:
    model = "claude-recovers"
    trip(gw, upstream, model)
    assert ask(gw, model) is not None
    time.sleep(OPEN_FOR + 0.1)
    # Half-open: PROBES requests go through at once; held at the upstream, any more are refused.
    gates = [Gate(timeout=30) for _ in range(PROBES)]
    for gate in gates:
        upstream.queue(Reply(head_gate=gate, chunks=[json.dumps({
            "id": "msg_probe", "type": "message", "role": "assistant", "model": model, "stop_reason": "end_turn",
            "content": [{"type": "text", "text": "ok"}], "usage": {"input_tokens": 1, "output_tokens": 1}}).encode()]))
    results: list[anthropic.APIStatusError | None] = []
    reached = len(upstream.requests) + PROBES
    probes = [threading.Thread(target=lambda: results.append(ask(gw, model))) for _ in range(PROBES)]
    for probe in probes:
        probe.start()
    deadline = time.monotonic() + 10
    while len(upstream.requests) < reached and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = ask(gw, model)
    assert busy is not None and busy.status_code == 503 and "half-open" in busy.message
    assert metric(gw, "coder_aibridged_circuit_breaker_state", **labels(model)) == 0.5
    for gate in gates:
        gate.open()
    for probe in probes:
        probe.join(30)
    assert results == [None] * PROBES
    assert metric(gw, "coder_aibridged_circuit_breaker_state", **labels(model)) == 0.0
    assert ask(gw, model) is None


def test_a_failed_probe_reopens_it(gw: Gateway, upstream: FakeUpstream) -> None:
    model = "claude-still-down"
    trip(gw, upstream, model, status=529)  # Anthropic's overloaded status counts on its API
    time.sleep(OPEN_FOR + 0.1)
    upstream.queue(overloaded(529))
    error = ask(gw, model)
    assert error is not None and error.status_code == 529  # the probe reached the upstream
    seen = len(upstream.requests)
    error = ask(gw, model)
    assert error is not None and error.status_code == 503 and "is open" in error.message
    assert len(upstream.requests) == seen
    assert metric(gw, "coder_aibridged_circuit_breaker_trips_total", **labels(model)) == 2.0


def test_openai_429s_trip_it_and_other_statuses_do_not(gw: Gateway, upstream: FakeUpstream) -> None:
    client = openai_client(gw)
    messages = [{"role": "user", "content": "hi"}]
    rate_limited = {"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": None}}
    for status in (500, 529, 400, 500):  # not failures for the breaker (529 only on Anthropic's API)
        upstream.queue(json_reply({"error": {"message": "no", "type": "server_error"}}, status))
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="gpt-not-tripped", messages=messages)  # type: ignore[arg-type]
    for _ in range(THRESHOLD):
        upstream.queue(json_reply(rate_limited, 429))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-not-tripped", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-not-tripped", messages=messages)  # type: ignore[arg-type]
    assert caught.value.status_code == 503
    assert caught.value.body["type"] == "server_error"  # type: ignore[index]
    assert "circuit breaker" in caught.value.message


def test_upstream_timeouts_count_as_failures(gw: Gateway, upstream: FakeUpstream) -> None:
    model = "claude-hanging"
    gates = [Gate(timeout=30) for _ in range(THRESHOLD)]
    try:
        for gate in gates:
            upstream.queue(Reply(head_gate=gate))
            error = ask(gw, model)
            assert error is not None and error.status_code == 504
        error = ask(gw, model)
        assert error is not None and error.status_code == 503 and "circuit breaker" in error.message
    finally:
        for gate in gates:
            gate.open()


def test_key_failover_cools_the_key_and_the_429_still_counts(gw: Gateway, upstream: FakeUpstream) -> None:
    client = openai_client(gw, "multi")
    messages = [{"role": "user", "content": "hi"}]
    rate_limited = {"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": None}}
    upstream.queue(json_reply(rate_limited, 429))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-multi", messages=messages)  # type: ignore[arg-type]
    assert client.chat.completions.create(model="gpt-multi", messages=messages).choices  # type: ignore[arg-type]
    keys = [r.headers["authorization"] for r in upstream.requests]
    assert keys[0] != keys[1]  # the second went out with the next key
    # Everything cooling is the gateway's own 429: it never reached the upstream and does not count.
    upstream.queue(json_reply(rate_limited, 429))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-multi", messages=messages)  # type: ignore[arg-type]
    for _ in range(THRESHOLD + 1):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-multi", messages=messages)  # type: ignore[arg-type]
        assert "every provider key" in caught.value.message
    assert metric(gw, "coder_aibridged_circuit_breaker_state",
                  **labels("gpt-multi", "multi", "/chat/completions")) == 0.0
