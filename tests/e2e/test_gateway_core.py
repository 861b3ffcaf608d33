"""The gateway core end to end: real gateway subprocess, official SDKs, fake upstream."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import anthropic
import httpx
import openai
import pytest

from tests.fakes.upstream import Gate, Reply, anthropic_events, sse
from tests.gateway_process import ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY, Gateway

pytestmark = pytest.mark.e2e

TOOLS_ANTHROPIC = [{"name": "get_weather", "description": "weather", "input_schema": {
    "type": "object", "properties": {"x": {"type": "integer"}}}}]
TOOLS_OPENAI = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}}}}]


def anthropic_client(gw: Gateway, key: str, prefix: str = "aibridge") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/api/v2/{prefix}/anthropic", api_key=key, max_retries=0)


def openai_client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/api/v2/aibridge/openai/v1", api_key=key, max_retries=0)


def interception(gw: Gateway, where: str = "true") -> dict:
    rows = gw.wait_for(f"select * from aibridge_interceptions where ended_at is not null and {where} "
                       "order by started_at desc limit 1")
    assert rows, f"no ended interception matching {where}"
    return rows[0]


def children(gw: Gateway, table: str, iid: str) -> list[dict]:
    return gw.query(f"select * from {table} where interception_id = '{iid}' order by created_at")


def latest_after(gw: Gateway, mark: str) -> dict:
    """The last interception started after `mark`, once it has ended (records are written in batches)."""
    rows = since(gw, mark)
    assert rows, "the request was not recorded"
    return rows[-1]


def since(gw: Gateway, mark: str) -> list[dict]:
    return gw.wait_for(f"select * from aibridge_interceptions where started_at > '{mark}'::TIMESTAMPTZ "
                       "and ended_at is not null order by started_at")


def mark(gw: Gateway) -> str:
    """A mark for `latest_after`: now, as the gateway's clock (same machine) sees it."""
    return datetime.now(UTC).isoformat()


def test_anthropic_sdk_stream_is_recorded(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    client = anthropic_client(gateway, gateway.user_key)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi there"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_headers={"anthropic-beta": "context-management-2025-06-27", "X-Claude-Code-Session-Id": "sess-1"},
    ) as stream:
        text = "".join(stream.text_stream)
    assert text.strip() == "Hello from the fake upstream."
    seen = upstream.requests[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY
    assert "authorization" not in seen.headers
    assert seen.headers["anthropic-beta"] == "context-management-2025-06-27"
    assert seen.headers["anthropic-version"]
    assert seen.headers["accept-encoding"] == "identity"
    assert gateway.user_key not in json.dumps(seen.headers)

    row = latest_after(gateway, before)
    assert row["provider"] == "anthropic" and row["provider_name"] == "anthropic"
    assert row["model"] == "claude-sonnet-4-5"
    assert row["status"] == "completed"
    assert row["client"] == "Anthropic SDK (Python)"
    assert row["client_session_id"] == "sess-1"
    assert row["credential_kind"] == "centralized"
    assert ANTHROPIC_PROVIDER_KEY not in (row["credential_hint"] or "")
    tokens = children(gateway, "aibridge_token_usages", row["id"])
    assert [(t["input_tokens"], t["output_tokens"], t["cache_read_input_tokens"],
             t["cache_write_input_tokens"]) for t in tokens] == [(25, 12, 100, 7)]
    assert [p["prompt"] for p in children(gateway, "aibridge_user_prompts", row["id"])] == ["hi there"]
    thoughts = children(gateway, "aibridge_model_thoughts", row["id"])
    assert [t["content"] for t in thoughts] == ["Let me think."]


def test_anthropic_blocking_tool_call_with_x_api_key(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    response = httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages?beta=true", trust_env=False,
                          headers={"x-api-key": gateway.user_key, "anthropic-version": "2023-06-01",
                                   "user-agent": "claude-cli/2.1.197 (external, sdk-cli)"},
                          json={"model": "claude-haiku-4-5", "max_tokens": 50, "tools": TOOLS_ANTHROPIC,
                                "messages": [{"role": "user", "content": [{"type": "text", "text": "weather?"}]}]})
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["type"] == "tool_use"
    assert upstream.requests[-1].path == "/v1/messages?beta=true"
    row = latest_after(gateway, before)
    assert row["client"] == "Claude Code"
    tools = children(gateway, "aibridge_tool_usages", row["id"])
    assert [(t["tool"], json.loads(t["input"]), t["injected"], t["server_url"]) for t in tools] == [
        ("get_weather", {"x": 1}, False, None)]
    assert tools[0]["provider_tool_call_id"].startswith("toolu_")


def test_openai_chat_stream_hides_the_usage_chunk_it_asked_for(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    with httpx.stream("POST", f"{gateway.url}/api/v2/aibridge/openai/v1/chat/completions", trust_env=False,
                      headers={"authorization": f"Bearer {gateway.user_key}"},
                      json={"model": "gpt-4.1", "stream": True,
                            "messages": [{"role": "user", "content": "hello"}]}) as response:
        body = response.read().decode()
    assert response.status_code == 200
    assert "usage" not in body  # neither the usage chunk nor `"usage": null` fields
    assert body.rstrip().endswith("data: [DONE]")
    sent = upstream.requests[-1]
    assert sent.json()["stream_options"] == {"include_usage": True}
    assert sent.headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
    row = latest_after(gateway, before)
    tokens = children(gateway, "aibridge_token_usages", row["id"])
    assert [(t["input_tokens"], t["output_tokens"], t["cache_read_input_tokens"]) for t in tokens] == [(30, 9, 100)]
    assert json.loads(tokens[0]["metadata"])["reasoning_tokens"] == 3


def test_openai_sdk_chat_stream_with_usage_and_tools(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    client = openai_client(gateway, gateway.user_key)
    stream = client.chat.completions.create(
        model="gpt-4.1", stream=True, stream_options={"include_usage": True}, tools=TOOLS_OPENAI,
        messages=[{"role": "user", "content": "weather in Paris?"}])
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 130
    row = latest_after(gateway, before)
    assert row["client"] == "OpenAI SDK (Python)"
    tools = children(gateway, "aibridge_tool_usages", row["id"])
    assert [(t["tool"], json.loads(t["input"])) for t in tools] == [("get_weather", {"x": 1})]
    assert [p["prompt"] for p in children(gateway, "aibridge_user_prompts", row["id"])] == ["weather in Paris?"]


def test_openai_responses_stream_and_blocking(gateway: Gateway, upstream) -> None:
    client = openai_client(gateway, gateway.user_key)
    for stream in (True, False):
        before = mark(gateway)
        kwargs = {"model": "gpt-5-codex", "input": "write a poem", "reasoning": {"summary": "auto"}}
        if stream:
            events = list(client.responses.create(stream=True, **kwargs))
            assert events[-1].type == "response.completed"
        else:
            assert client.responses.create(**kwargs).output_text == "Hello from the fake upstream."
        row = latest_after(gateway, before)
        assert row["status"] == "completed", row
        tokens = children(gateway, "aibridge_token_usages", row["id"])
        assert [(t["input_tokens"], t["output_tokens"], t["cache_read_input_tokens"]) for t in tokens] == [
            (30, 20, 200)]
        thoughts = children(gateway, "aibridge_model_thoughts", row["id"])
        assert [(t["content"], json.loads(t["metadata"])["source"]) for t in thoughts] == [
            ("Thinking about it.", "reasoning_summary")]
        assert [p["prompt"] for p in children(gateway, "aibridge_user_prompts", row["id"])] == ["write a poem"]


def test_ai_gateway_prefix_alias(gateway: Gateway, upstream) -> None:
    client = anthropic_client(gateway, gateway.user_key, prefix="ai-gateway")
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "Hello from the fake upstream."


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"x-api-key": "aigw_deadbeef_not-a-real-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}, 401),
    ({"authorization": "Bearer sk-ant-not-a-gateway-key"}, 401),
])
def test_bad_keys_are_refused_in_the_provider_shape(gateway: Gateway, upstream, headers, status) -> None:
    response = httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages", headers=headers,
                          json={"model": "m", "messages": []}, trust_env=False)
    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    response = httpx.post(f"{gateway.url}/api/v2/aibridge/openai/v1/chat/completions", headers=headers,
                          json={"model": "m", "messages": []}, trust_env=False)
    assert response.status_code == status
    assert "message" in response.json()["error"]
    assert upstream.requests == []


def test_revoked_and_expired_keys(gateway: Gateway, upstream) -> None:
    key = gateway.create_key("bob")
    ok = httpx.get(f"{gateway.url}/api/v2/aibridge/anthropic/v1/models", headers={"x-api-key": key},
                   trust_env=False)
    assert ok.status_code == 200
    key_id = "_".join(key.split("_")[:2])
    assert key_id in gateway.cli("keys", "list").stdout
    gateway.cli("keys", "revoke", key_id)
    refused = httpx.get(f"{gateway.url}/api/v2/aibridge/anthropic/v1/models", headers={"x-api-key": key},
                        trust_env=False)
    assert refused.status_code == 401
    listed = json.loads(gateway.cli("keys", "list", "--json").stdout)
    assert next(k for k in listed if k["id"] == key_id)["revoked_at"]


def test_expired_keys_are_refused(gateway: Gateway, upstream) -> None:
    out = gateway.cli("keys", "create", "--user", "carol", "--expires", "1s", "--json")
    key = json.loads(out.stdout)["key"]
    deadline = time.monotonic() + 30
    status = 200
    while status != 401 and time.monotonic() < deadline:  # expiry is checked per request
        status = httpx.get(f"{gateway.url}/api/v2/aibridge/anthropic/v1/models", headers={"x-api-key": key},
                           trust_env=False).status_code
        time.sleep(0.2)
    assert status == 401


def test_unknown_instance_and_path(gateway: Gateway, upstream) -> None:
    headers = {"x-api-key": gateway.user_key}
    r = httpx.post(f"{gateway.url}/api/v2/aibridge/nope/v1/messages", headers=headers, json={}, trust_env=False)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/completions", headers=headers, json={},
                   trust_env=False)
    assert r.status_code == 404 and r.json()["type"] == "error"
    r = httpx.post(f"{gateway.url}/api/v2/aibridge/openai/v1/completions", headers=headers, json={},
                   trust_env=False)
    assert r.status_code == 404 and "message" in r.json()["error"]
    assert upstream.requests == []


def test_byok_forwards_the_clients_own_key(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    own = "sk-ant-api03-USERS-OWN-KEY-cccccccccccccccc"
    client = anthropic.Anthropic(base_url=f"{gateway.url}/api/v2/aibridge/anthropic", api_key=own,
                                 default_headers={"X-Aigw-Token": gateway.user_key}, max_retries=0)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    seen = upstream.requests[-1]
    assert own in (seen.headers.get("x-api-key", ""), seen.headers.get("authorization", "").removeprefix("Bearer "))
    assert "x-aigw-token" not in seen.headers
    assert ANTHROPIC_PROVIDER_KEY not in json.dumps(seen.headers)
    row = latest_after(gateway, before)
    assert row["credential_kind"] == "byok"
    assert row["credential_hint"] and own not in row["credential_hint"]


def test_passthrough_routes_are_relayed_not_recorded(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    r = httpx.get(f"{gateway.url}/api/v2/aibridge/openai/v1/models", trust_env=False,
                  headers={"authorization": f"Bearer {gateway.user_key}"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "fake-model"
    assert upstream.requests[-1].path == "/v1/models"
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
    r = httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages/count_tokens", trust_env=False,
                   headers={"x-api-key": gateway.user_key}, json={"model": "m", "messages": []})
    assert r.json() == {"input_tokens": 42}
    # A later recorded request proves the writer caught up; the passthrough calls added nothing.
    anthropic_client(gateway, gateway.user_key).messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert len(since(gateway, before)) == 1


def test_malformed_json_is_a_recorded_400(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    r = httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages", content=b"{not json",
                   headers={"x-api-key": gateway.user_key, "content-type": "application/json"}, trust_env=False)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []
    row = latest_after(gateway, before)
    assert row["status"] == "failed"
    assert "JSON" in json.loads(row["metadata"])["error"]


def test_upstream_error_is_relayed_and_recorded(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long"}}
    upstream.queue(Reply(status=400, chunks=[json.dumps(error).encode()]))
    r = httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages", trust_env=False,
                   headers={"x-api-key": gateway.user_key}, json={"model": "m", "max_tokens": 1, "messages": []})
    assert r.status_code == 400 and r.json() == error
    row = latest_after(gateway, before)
    assert row["status"] == "failed"
    metadata = json.loads(row["metadata"])
    assert metadata["http_status"] == 400 and "prompt is too long" in metadata["error"]


def test_sse_error_after_200_is_relayed_and_recorded_failed(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    events = anthropic_events(body)[:3]
    events.append(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=events))
    r = httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages", trust_env=False,
                   headers={"x-api-key": gateway.user_key}, json=body)
    assert r.status_code == 200 and "overloaded_error" in r.text
    row = latest_after(gateway, before)
    assert row["status"] == "failed" and "Overloaded" in json.loads(row["metadata"])["error"]


def test_truncated_stream_is_recorded_failed_with_tokens_so_far(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=anthropic_events(body)[:4],
                         truncate=True))
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages", trust_env=False,
                   headers={"x-api-key": gateway.user_key}, json=body).raise_for_status()
    row = latest_after(gateway, before)
    assert row["status"] == "failed"
    tokens = children(gateway, "aibridge_token_usages", row["id"])
    assert [(t["input_tokens"], t["output_tokens"]) for t in tokens] == [(25, 1)]


def test_unreachable_upstream_is_a_json_502_and_recorded(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    client = anthropic.Anthropic(base_url=f"{gateway.url}/api/v2/aibridge/dead", api_key=gateway.user_key,
                                 max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 502
    assert raised.value.body["error"]["type"] == "api_error"
    row = latest_after(gateway, before)
    assert row["provider_name"] == "dead" and row["status"] == "failed"
    assert json.loads(row["metadata"])["error"]


def test_known_models_are_priced(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    anthropic_client(gateway, gateway.user_key).messages.create(
        model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    row = latest_after(gateway, before)
    tokens = children(gateway, "aibridge_token_usages", row["id"])
    # 25 input, 12 output, 100 cache read, 7 cache write at $3 / $15 / $0.30 / $3.75 per million.
    assert tokens[0]["cost_usd"] == pytest.approx((25 * 3 + 12 * 15 + 100 * 0.3 + 7 * 3.75) / 1e6)


def test_provider_keys_fail_over_on_429_and_401(gateway: Gateway, upstream) -> None:
    url = f"{gateway.url}/api/v2/aibridge/multi/v1/chat/completions"
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]}
    headers = {"authorization": f"Bearer {gateway.user_key}"}
    limited = {"error": {"message": "slow down", "type": "rate_limit_exceeded"}}
    upstream.queue(Reply(status=429, headers={"retry-after": "120"}, chunks=[json.dumps(limited).encode()]))
    assert httpx.post(url, json=body, headers=headers, trust_env=False).status_code == 429
    assert httpx.post(url, json=body, headers=headers, trust_env=False).status_code == 200
    assert [r.headers["authorization"] for r in upstream.requests] == [
        "Bearer sk-first-key-0000000000000000", "Bearer sk-second-key-000000000000000"]
    upstream.queue(Reply(status=401, chunks=[b'{"error": {"message": "bad key", "type": "invalid_request_error"}}']))
    assert httpx.post(url, json=body, headers=headers, trust_env=False).status_code == 401
    refused = httpx.post(url, json=body, headers=headers, trust_env=False)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "120"
    assert "rate limited" in refused.json()["error"]["message"]
    assert len(upstream.requests) == 3  # the last one never left the gateway


def test_stream_is_not_buffered(gateway: Gateway, upstream) -> None:
    """The upstream holds the rest of the stream until the client has the first event.

    A buffering gateway would never deliver the first event: the read times out.
    """
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    events = anthropic_events(body)
    gate = Gate(timeout=20)
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[events[0], gate, *events[1:]]))
    with httpx.stream("POST", f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages", json=body,
                      headers={"x-api-key": gateway.user_key}, timeout=httpx.Timeout(15), trust_env=False) as r:
        received = b""
        chunks = r.iter_raw()
        while b"\n\n" not in received:
            received += next(chunks)
        assert received.startswith(b"event: message_start")
        gate.open()
        received += b"".join(chunks)
    assert received.rstrip().endswith(b'data: {"type": "message_stop"}')


def test_client_disconnect_mid_stream_is_cancelled(gateway: Gateway, upstream) -> None:
    before = mark(gateway)
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "bye"}]}
    events = anthropic_events(body)
    gate = Gate(timeout=10)
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[events[0], gate, *events[1:]]))
    with httpx.stream("POST", f"{gateway.url}/api/v2/aibridge/anthropic/v1/messages", json=body,
                      headers={"x-api-key": gateway.user_key}, trust_env=False) as r:
        next(r.iter_raw())
    threading.Timer(2, gate.open).start()
    row = latest_after(gateway, before)
    assert row["status"] == "cancelled", row
    tokens = children(gateway, "aibridge_token_usages", row["id"])
    assert [(t["input_tokens"], t["output_tokens"]) for t in tokens] == [(25, 1)]


def test_query_and_keys_via_cli_while_running(gateway: Gateway, upstream) -> None:
    out = gateway.cli("query", "select provider_name, count(*) as n from aibridge_interceptions group by 1 "
                               "order by 1", "--format", "json")
    rows = json.loads(out.stdout)
    assert {r["provider_name"] for r in rows} >= {"anthropic", "openai"}
    refused = gateway.cli("query", "delete from aibridge_interceptions", check=False)
    assert refused.returncode != 0 and "read-only" in refused.stderr


def test_no_secret_in_logs_or_database(gateway: Gateway, upstream) -> None:
    dump = json.dumps(gateway.query(
        "select (select list(i) from aibridge_interceptions i) a, (select list(k) from api_keys k) b, "
        "(select list(t) from aibridge_token_usages t) c"), default=str)
    for secret in (ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY, gateway.user_key, gateway.admin_key):
        assert secret not in dump
        assert secret not in gateway.output()
