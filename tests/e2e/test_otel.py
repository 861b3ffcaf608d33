"""OpenTelemetry export end to end: the real gateway, the official SDKs, an OTLP/HTTP receiver on loopback.

Span attributes are checked against the rows the gateway recorded (same tokens, same session id).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.otlp import OtlpReceiver, ReceivedSpan
from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import ANTHROPIC_PROVIDER_KEY, Gateway, clean_env, free_port, provider_env

pytestmark = pytest.mark.e2e

CLAUDE_CODE = {"user-agent": "claude-cli/2.0.14 (external, cli)"}
TOOLS_OPENAI = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                  "parameters": {"type": "object", "properties": {}}}}]
PARENT_TRACE, PARENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def otel_env(upstream: FakeUpstream, endpoint: str, **extra: str) -> dict[str, str]:
    return clean_env(**{**provider_env(upstream.url), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                        "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300",
                        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=e2e", **extra})


def start_gateway(workdir: Path, env: dict[str, str], *args: str) -> Gateway:
    gw = Gateway(workdir, env, list(args))
    gw.user_key = gw.create_key("alice")  # type: ignore[attr-defined]
    return gw.start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def otel_gateway(upstream: FakeUpstream, receiver: OtlpReceiver,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # The endpoint variable alone switches export on; the flag adds upstream propagation.
    gw = start_gateway(tmp_path_factory.mktemp("otel"), otel_env(upstream, receiver.url),
                       "--aibridge-otel-propagate-upstream", "--prometheus-enable",
                       f"--prometheus-address=127.0.0.1:{free_port()}")
    yield gw
    gw.stop()


def anthropic_client(gw: Gateway, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/api/v2/aibridge/anthropic", api_key=gw.user_key,  # type: ignore[attr-defined]
                               max_retries=0, default_headers=headers)


def openai_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/api/v2/aibridge/openai/v1", api_key=gw.user_key,  # type: ignore[attr-defined]
                         max_retries=0)


def interception(gw: Gateway, where: str) -> dict[str, Any]:
    rows = gw.wait_for(f"select * from aibridge_interceptions_v where ended_at is not null and {where}")
    assert len(rows) == 1, rows
    return rows[0]


def logged(gw: Gateway, text: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while text not in gw.output():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def span_of(receiver: OtlpReceiver, interception_id: str) -> ReceivedSpan:
    spans = receiver.wait_spans(lambda s: any(x.attributes.get("aigw.interception_id") == interception_id
                                              for x in s))
    found = [s for s in spans if s.attributes.get("aigw.interception_id") == interception_id]
    assert len(found) == 1, f"expected one span for {interception_id}, got {len(found)}"
    return found[0]


def test_span_attributes_match_the_recorded_rows(otel_gateway: Gateway, receiver: OtlpReceiver,
                                                 upstream: FakeUpstream) -> None:
    session = f"sess-{uuid.uuid4()}"
    client = anthropic_client(otel_gateway, **CLAUDE_CODE, **{"x-claude-code-session-id": session})
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=50,
                                messages=[{"role": "user", "content": "secret plans for the weekend"}]) as stream:
        text = "".join(stream.text_stream)
    assert text.strip() == "Hello from the fake upstream."
    row = interception(otel_gateway, f"client_session_id = '{session}'")
    usage = otel_gateway.wait_for(f"select * from aibridge_token_usages where interception_id = '{row['id']}'")[0]
    span = span_of(receiver, row["id"])
    metadata = json.loads(row["metadata"])

    assert span.name == "chat claude-sonnet-4-5"
    assert span.kind == 3  # SPAN_KIND_CLIENT
    assert span.parent_span_id == ""  # the client sent no traceparent: a root span
    assert span.resource["service.name"] == "aigw"
    assert span.resource["deployment.environment.name"] == "e2e"
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.model"] == row["model"] == "claude-sonnet-4-5"
    assert a["gen_ai.response.model"] == metadata["upstream_model"]
    assert a["gen_ai.response.id"] == usage["provider_response_id"] == metadata["response_id"]
    assert a["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert a["gen_ai.usage.input_tokens"] == (usage["input_tokens"] + usage["cache_read_input_tokens"]
                                              + usage["cache_write_input_tokens"])
    assert a["gen_ai.usage.output_tokens"] == usage["output_tokens"] == 12
    assert a["gen_ai.usage.cache_read.input_tokens"] == usage["cache_read_input_tokens"] == 100
    assert a["gen_ai.usage.cache_creation.input_tokens"] == usage["cache_write_input_tokens"] == 7
    assert a["gen_ai.conversation.id"] == row["session_id"] == session
    assert a["gen_ai.request.stream"] is True
    assert 0 <= a["gen_ai.response.time_to_first_chunk"] <= (span.end_ns - span.start_ns) / 1e9
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == int(upstream.url.rsplit(":", 1)[1])
    assert a["aigw.instance"] == "anthropic" and a["aigw.client"] == row["client"] == "Claude Code"
    assert a["aigw.initiator"] == row["initiator_id"]
    assert a["aigw.credential_kind"] == "centralized" and a["aigw.status"] == "completed"
    assert a["aigw.cost_usd"] == pytest.approx(usage["cost_usd"])
    assert "error.type" not in a and span.status_code == 0
    # Content is opt-in: the prompt is nowhere in the export.
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in a)
    assert "secret plans" not in repr(span)
    # The upstream got the gateway's own traceparent (--aibridge-otel-propagate-upstream).
    assert upstream.requests[-1].headers["traceparent"] == f"00-{span.trace_id}-{span.span_id}-01"


def test_a_tool_call_round_trip_links_the_answer_to_the_call(otel_gateway: Gateway, receiver: OtlpReceiver) -> None:
    client = openai_client(otel_gateway)
    messages: list[Any] = [{"role": "user", "content": f"weather? {uuid.uuid4()}"}]
    first = client.chat.completions.create(model="gpt-5", messages=messages, tools=TOOLS_OPENAI)  # type: ignore[arg-type]
    [call] = first.choices[0].message.tool_calls or []
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="gpt-5", messages=messages, tools=TOOLS_OPENAI)  # type: ignore[arg-type]
    assert second.choices[0].message.content

    row = interception(otel_gateway, f"(metadata->>'response_id') = '{second.id}'")
    parent_row = interception(otel_gateway, f"(metadata->>'response_id') = '{first.id}'")
    assert row["thread_parent_id"] == parent_row["id"]
    caller, answer = span_of(receiver, parent_row["id"]), span_of(receiver, row["id"])

    assert caller.attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert answer.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    [event] = caller.events
    assert event[0] == "gen_ai.tool.call"
    assert event[1]["gen_ai.tool.name"] == "get_weather" and event[1]["gen_ai.tool.call.id"] == call.id
    assert "gen_ai.tool.call.arguments" not in event[1]  # content is opt-in
    [link] = answer.links
    assert (link[0], link[1]) == (caller.trace_id, caller.span_id)
    assert link[2] == {"aigw.relation": "thread_parent", "gen_ai.tool.call.id": call.id}
    assert answer.attributes["aigw.thread_parent_id"] == row["thread_parent_id"]
    assert answer.attributes["aigw.thread_root_id"] == row["thread_root_id"] == parent_row["id"]
    assert answer.attributes["gen_ai.conversation.id"] == row["session_id"] == parent_row["session_id"]
    assert answer.attributes["openai.api.type"] == "chat_completions"


def test_an_inbound_traceparent_makes_the_span_its_child(otel_gateway: Gateway, receiver: OtlpReceiver,
                                                         upstream: FakeUpstream) -> None:
    marker = str(uuid.uuid4())
    client = anthropic_client(otel_gateway, traceparent=f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
                              tracestate="vendor=opaque")
    client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": marker}])
    row = interception(otel_gateway, f"id in (select interception_id from aibridge_user_prompts "
                                     f"where prompt = '{marker}')")
    span = span_of(receiver, row["id"])
    assert (span.trace_id, span.parent_span_id) == (PARENT_TRACE, PARENT_SPAN)
    assert span.trace_state == "vendor=opaque"
    # Upstream: the gateway's span as the parent, in the client's trace; the client's tracestate kept.
    seen = upstream.requests[-1].headers
    assert seen["traceparent"] == f"00-{PARENT_TRACE}-{span.span_id}-01"
    assert seen["tracestate"] == "vendor=opaque"

    # A caller that does not sample gets no span from the gateway either, and says so upstream.
    unsampled = str(uuid.uuid4())
    client = anthropic_client(otel_gateway, traceparent=f"00-{PARENT_TRACE}-{PARENT_SPAN}-00")
    client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": unsampled}])
    assert upstream.requests[-1].headers["traceparent"].startswith(f"00-{PARENT_TRACE}-")
    assert upstream.requests[-1].headers["traceparent"].endswith("-00")
    row = interception(otel_gateway, f"id in (select interception_id from aibridge_user_prompts "
                                     f"where prompt = '{unsampled}')")
    marker_again = str(uuid.uuid4())  # a later sampled span proves the unsampled one was not just late
    anthropic_client(otel_gateway).messages.create(model="claude-haiku-4-5", max_tokens=20,
                                                   messages=[{"role": "user", "content": marker_again}])
    later = interception(otel_gateway, f"id in (select interception_id from aibridge_user_prompts "
                                       f"where prompt = '{marker_again}')")
    span_of(receiver, later["id"])
    assert not [s for s in receiver.spans if s.attributes.get("aigw.interception_id") == row["id"]]


def test_genai_metrics_reach_the_collector(otel_gateway: Gateway, receiver: OtlpReceiver) -> None:
    with anthropic_client(otel_gateway).messages.stream(
            model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.until_done()

    def have(points: list[Any]) -> bool:
        names = {p.metric for p in points}
        return {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
                "gen_ai.client.operation.time_to_first_chunk"} <= names

    points = receiver.wait_points(have)
    assert have(points)
    latest: dict[tuple[str, str], Any] = {}
    for p in points:  # cumulative temporality: the last point of a series is its total
        latest[(p.metric, p.attributes.get("gen_ai.token.type", ""))] = p
    tokens_in = latest[("gen_ai.client.token.usage", "input")]
    assert tokens_in.unit == "{token}" and tokens_in.bounds[:3] == [1, 4, 16]
    assert tokens_in.attributes["gen_ai.provider.name"] == "anthropic"
    assert tokens_in.attributes["gen_ai.operation.name"] == "chat"
    assert tokens_in.sum >= 132  # 25 + 100 cached + 7 written, per request
    duration = latest[("gen_ai.client.operation.duration", "")]
    assert duration.unit == "s" and duration.count >= 1 and duration.bounds[:2] == [0.01, 0.02]
    assert latest[("gen_ai.client.operation.time_to_first_chunk", "")].count >= 1


def test_prometheus_has_the_time_to_first_token_and_the_cost_of_the_rows(otel_gateway: Gateway) -> None:
    address = next(a for a in otel_gateway.extra_args if a.startswith("--prometheus-address="))
    url = "http://" + address.split("=", 1)[1] + "/metrics"
    model = "claude-sonnet-4-5"

    def scrape(user: str) -> tuple[float, float]:
        samples = [s for family in text_string_to_metric_families(httpx.get(url, trust_env=False).text)
                   for s in family.samples]
        cost = sum(s.value for s in samples if s.name == "coder_aibridged_cost_usd_total"
                   and s.labels.get("model") == model and s.labels.get("initiator_id") == user)
        ttft = sum(s.value for s in samples if s.name == "coder_aibridged_time_to_first_token_seconds_count"
                   and s.labels == {"provider": "anthropic", "model": model})
        return cost, ttft

    # The time to first token is a stream's: two streams and one blocking call add exactly two.
    marker = f"ttft-{uuid.uuid4()}"
    _, ttft_before = scrape("")
    client = anthropic_client(otel_gateway)
    client.messages.create(model=model, max_tokens=20, messages=[{"role": "user", "content": f"{marker} blocking"}])
    for i in range(2):
        with client.messages.stream(model=model, max_tokens=50,
                                    messages=[{"role": "user", "content": f"{marker} stream {i}"}]) as stream:
            stream.until_done()
    mine = otel_gateway.wait_for(
        "select i.initiator_id, (i.metadata->>'stream')::boolean as stream from aibridge_interceptions i "
        "join aibridge_user_prompts p on p.interception_id = i.id "
        f"where p.prompt like '{marker}%' and i.ended_at is not null", lambda r: len(r) == 3)
    assert sorted(r["stream"] for r in mine) == [False, True, True]
    # The sink sees each end record as the writer gets it; the blocking call came first, so had it counted,
    # the third would be there by the time both streams are.
    deadline = time.monotonic() + 10
    while scrape("")[1] - ttft_before < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape("")[1] - ttft_before == 2

    # The cost counter per initiator is the sum of the rows' costs (rows are written in batches).
    sql = ("select i.initiator_id, count(*) as n, sum(t.cost_usd) as usd from aibridge_interceptions i "
           "join aibridge_token_usages t on t.interception_id = i.id where i.provider_name = 'anthropic' "
           f"and i.model = '{model}' and i.ended_at is not null group by 1")
    rows = otel_gateway.wait_for(sql, lambda r: len(r) == 1 and r[0]["usd"] == pytest.approx(
        scrape(r[0]["initiator_id"])[0]))
    [row] = rows
    assert row["initiator_id"] == mine[0]["initiator_id"]
    assert row["usd"] > 0 and scrape(row["initiator_id"])[0] == pytest.approx(row["usd"])


def test_content_only_when_enabled_and_redacted(upstream: FakeUpstream, receiver: OtlpReceiver,
                                                tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, otel_env(upstream, receiver.url,
                                          OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true"))
    try:
        marker = f"my key is {ANTHROPIC_PROVIDER_KEY} {uuid.uuid4()}"
        client = anthropic_client(gw, traceparent=f"00-{PARENT_TRACE}-{PARENT_SPAN}-01")
        client.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                               messages=[{"role": "user", "content": marker}])
        # Without --aibridge-otel-propagate-upstream the client's traceparent goes upstream untouched.
        assert upstream.requests[-1].headers["traceparent"] == f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
        row = gw.wait_for("select id from aibridge_interceptions where ended_at is not null")[0]
        span = span_of(receiver, row["id"])
        [message] = json.loads(span.attributes["gen_ai.input.messages"])
        assert message["role"] == "user"
        assert message["parts"][0]["content"] == marker.replace(ANTHROPIC_PROVIDER_KEY, "[REDACTED]")
        assert ANTHROPIC_PROVIDER_KEY not in repr(span)

        # Bring-your-own-key: the client's own key is scrubbed too (as the dumps and the web UI scrub it),
        # though the gateway knows it only from this request.
        own = f"sk-ant-api03-USERS-OWN-KEY-{uuid.uuid4().hex}"
        byok = anthropic.Anthropic(base_url=f"{gw.url}/api/v2/aibridge/anthropic", api_key=own, max_retries=0,
                                   default_headers={"X-Aigw-Token": gw.user_key})  # type: ignore[attr-defined]
        byok.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                             messages=[{"role": "user", "content": f"is {own} my key?"}])
        row = gw.wait_for("select id from aibridge_interceptions where ended_at is not null "
                          "and credential_kind = 'byok'")[0]
        span = span_of(receiver, row["id"])
        [message] = json.loads(span.attributes["gen_ai.input.messages"])
        assert message["parts"][0]["content"] == "is [REDACTED] my key?"
        assert own not in repr(span)
    finally:
        gw.stop()


@pytest.mark.parametrize("collector", ["dead", "slow"])
def test_a_dead_or_slow_collector_leaves_traffic_untouched(collector: str, upstream: FakeUpstream,
                                                           tmp_path: Path) -> None:
    slow = OtlpReceiver(delay=3).start() if collector == "slow" else None
    endpoint = slow.url if slow else f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(tmp_path, otel_env(upstream, endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1",
                                          OTEL_BSP_SCHEDULE_DELAY="10"))
    try:
        for i in range(5):
            with anthropic_client(gw).messages.stream(
                    model="claude-sonnet-4-5", max_tokens=50,
                    messages=[{"role": "user", "content": f"hello {i}"}]) as stream:
                assert "".join(stream.text_stream).strip() == "Hello from the fake upstream."
            reply = openai_client(gw).chat.completions.create(model="gpt-5", messages=[{"role": "user",
                                                                                        "content": "hi"}])
            assert reply.choices[0].message.content
        rows = gw.wait_for("select status from aibridge_interceptions where ended_at is not null",
                           lambda r: len(r) >= 10)
        assert [r["status"] for r in rows] == ["completed"] * 10
        assert httpx.get(gw.url + "/healthz", trust_env=False).status_code == 200
        # The export was attempted all the same: the slow collector got requests, the dead one a warning.
        if slow:
            assert slow.wait_requests(lambda r: any(path == "/v1/traces" for path, _ in r))
        else:
            assert logged(gw, "Failed to export spans batch"), gw.output()[-2000:]
    finally:
        code = gw.stop(signal.SIGTERM, timeout=20)
        if slow:
            slow.stop()
    assert code == 0, gw.output()[-2000:]


def test_stopping_with_a_collector_that_never_answers_stays_within_the_otel_budget(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    silent = OtlpReceiver(delay=600).start()  # takes each export, answers none
    gw = start_gateway(tmp_path, otel_env(upstream, silent.url, OTEL_EXPORTER_OTLP_TIMEOUT="120",
                                          OTEL_BSP_SCHEDULE_DELAY="10"))
    try:
        anthropic_client(gw).messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                             messages=[{"role": "user", "content": "hi"}])
        assert silent.wait_requests(lambda r: any(path == "/v1/traces" for path, _ in r))  # an export is held
        anthropic_client(gw).messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                             messages=[{"role": "user", "content": "queued behind it"}])
        gw.wait_for("select id from aibridge_interceptions where ended_at is not null", lambda r: len(r) == 2)
    finally:
        # The exporter would wait 120 s for an answer; the stop gives the export 3 s, then exits cleanly.
        code = gw.stop(signal.SIGTERM, timeout=15)
        silent.stop()
    assert code == 0, gw.output()[-2000:]
    assert ("OpenTelemetry: the collector did not take the last spans and measurements within 3 s; "
            "stopping without them") in gw.output()
