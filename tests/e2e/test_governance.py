"""Limits, budgets and model allowlists end to end: the real gateway, the official SDKs, a fake upstream.

Each refusal is checked three ways: what the client got (status, the provider's error shape,
Retry-After and rate-limit headers), what reached the upstream (nothing), and the failed
interception row naming the limit. The SDKs' own retries are counted at the fake upstream.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, Gate, Reply, anthropic_events
from tests.gateway_process import Gateway, clean_env, free_port, provider_env

pytestmark = pytest.mark.e2e

# Test prices: one fake Anthropic answer (25 input, 12 output, 100 cache-read tokens …) costs over 1 USD.
PRICES = """\
overrides:
  - provider: anthropic
    model: claude-sonnet-4-5
    input: 10000
    output: 10000
"""


def start(tmp_path: Path, upstream: FakeUpstream, *args: str, **env: str) -> Gateway:
    gateway = Gateway(tmp_path, clean_env(**provider_env(upstream.url), **env), args)
    gateway.admin = gateway.create_key("root", admin=True)  # type: ignore[attr-defined]
    return gateway


def admin(gw: Gateway, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, gw.url + "/api/v2/aibridge" + path, json=body, trust_env=False, timeout=10,
                         headers={"authorization": f"Bearer {gw.admin}"})  # type: ignore[attr-defined]


def claude(gw: Gateway, key: str, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url + "/api/v2/aibridge/anthropic", api_key=key, max_retries=retries,
                               timeout=30)


def ask(client: anthropic.Anthropic, model: str = "claude-sonnet-4-5") -> anthropic.types.Message:
    return client.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "say hi"}])


def refusals(gw: Gateway, reason: str, expected: int = 1) -> list[dict[str, object]]:
    """The failed interceptions naming `reason`, once `expected` of them are written."""
    rows = gw.wait_for(f"select status, metadata from aibridge_interceptions where metadata->>'limit' = '{reason}'",
                       lambda r: len(r) >= expected)
    return [{**r, "metadata": json.loads(str(r["metadata"]))} for r in rows]


def test_user_rpm_refuses_with_retry_after_and_rate_limit_headers(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start(tmp_path, upstream)
    key = gw.create_key("bob")
    gw.cli("users", "set", "bob", "--rpm", "2")
    gw.start()
    try:
        client = claude(gw, key)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "say hi"}])
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "2"
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == "1"
        ask(client)
        hits = len(upstream.requests)
        with pytest.raises(anthropic.RateLimitError) as caught:
            ask(client)
        response = caught.value.response
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert "2 requests per minute" in response.json()["error"]["message"]
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert len(upstream.requests) == hits  # the refusal never reached the upstream
        rows = refusals(gw, "rpm")
        assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["metadata"]["http_status"] == 429
    finally:
        gw.stop()


def test_the_stricter_of_key_and_user_applies_and_openai_gets_its_own_headers(
        tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start(tmp_path, upstream, "--aibridge-default-rpm", "100")
    out = gw.cli("keys", "create", "--user", "carol", "--rpm", "1", "--json")
    key = json.loads(out.stdout)["key"]
    gw.start()
    try:
        client = openai.OpenAI(base_url=gw.url + "/api/v2/aibridge/openai/v1", api_key=key, max_retries=0,
                               timeout=30)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-5", messages=[{"role": "user", "content": "say hi"}])
        assert raw.headers["x-ratelimit-limit-requests"] == "1"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "say hi"}])
        assert "your key reached the limit of 1 requests per minute" in str(caught.value)
    finally:
        gw.stop()


def test_sdk_retries_honour_retry_after_until_the_window_frees(tmp_path: Path, upstream: FakeUpstream) -> None:
    """The SDK's own retry (max_retries) waits Retry-After; with per-second rate limits it gets through."""
    gw = start(tmp_path, upstream, "--aibridge-rate-limit", "0.2")  # one every 5 s: the second is refused
    key = gw.create_key("dave")
    gw.start()
    try:
        client = claude(gw, key, retries=3)
        ask(client)
        before = len(upstream.requests)
        ask(client)  # refused (429, Retry-After: 5), then retried by the SDK after the wait and served
        assert len(upstream.requests) == before + 1
        assert len(refusals(gw, "rate")) >= 1
    finally:
        gw.stop()


def test_max_streams(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start(tmp_path, upstream, "--aibridge-max-concurrency", "5")
    key = gw.create_key("erin")
    gw.cli("users", "set", "erin", "--max-streams", "1")
    gw.start()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "say hi"}]}
    events = anthropic_events(body)
    gate = Gate()
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[*events[:2], gate, *events[2:]]))
    try:
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=30) as http:
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
            path = "/api/v2/aibridge/anthropic/v1/messages"
            with http.stream("POST", path, json=body, headers=headers) as first:
                assert first.status_code == 200
                second = http.post(path, json=body, headers=headers)
                assert second.status_code == 429, second.text
                assert "1 requests in flight" in second.json()["error"]["message"]
                assert len(upstream.requests) == 1
                gate.open()
                first.read()
            assert http.post(path, json=body, headers=headers).status_code == 200  # the stream ended: room again
        assert len(refusals(gw, "streams")) == 1
    finally:
        gate.open()
        gw.stop()


def test_max_concurrency_per_process(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start(tmp_path, upstream, "--aibridge-max-concurrency", "1")
    key = gw.create_key("fred")
    gw.start()
    body = {"model": "gpt-5", "stream": True, "messages": [{"role": "user", "content": "say hi"}]}
    gate = Gate()
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[gate, b"data: [DONE]\n\n"]))
    try:
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=30) as http:
            headers = {"authorization": f"Bearer {key}"}
            path = "/api/v2/aibridge/openai/v1/chat/completions"
            with http.stream("POST", path, json=body, headers=headers) as first:
                assert first.status_code == 200
                second = http.post(path, json=body, headers=headers)
                assert second.status_code == 503 and second.headers["retry-after"] == "1"
                assert second.json()["error"]["type"] == "server_error"
                gate.open()
                first.read()
        assert len(refusals(gw, "concurrency")) == 1
    finally:
        gate.open()
        gw.stop()


def test_budget_groups_policy_override_and_restart(tmp_path: Path, upstream: FakeUpstream) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES)
    args = ("--aibridge-prices-file", str(prices))
    gw = start(tmp_path, upstream, *args)
    key = gw.create_key("frank")
    gw.cli("groups", "create", "big", "--budget", "1000")
    gw.cli("groups", "create", "small", "--budget", "0.5")
    gw.cli("users", "add", "frank", "--group", "big")
    gw.cli("users", "add", "frank", "--group", "small")
    gw.start()
    try:
        client = claude(gw, key)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "say hi"}])
        assert float(raw.headers["x-aigw-budget-remaining-usd"]) == 1000.0  # highest: the big group
        admin(gw, "PUT", "/admin/users/frank", {"budget_usd": 0.5}).raise_for_status()  # override, in force at once
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            ask(client)
        message = caught.value.response.json()["error"]["message"]
        assert "budget exhausted" in message and "0.50 USD" in message and "resets at" in message
        report = json.loads(gw.cli("budgets", "list", "--json").stdout)
        frank = next(r for r in report["users"] if r["user"] == "frank")
        assert frank["over"] is True and frank["source"] == "user"
    finally:
        gw.stop()
    # Spend survives a restart: rebuilt from the database.
    gw2 = Gateway(tmp_path, gw.env, args)
    gw2.admin = gw.admin  # type: ignore[attr-defined]
    gw2.start()
    try:
        with pytest.raises(anthropic.PermissionDeniedError):
            ask(claude(gw2, key))
        admin(gw2, "PUT", "/admin/users/frank", {"budget_usd": None}).raise_for_status()
        ask(claude(gw2, key))  # the group's 1000 USD again (policy highest)
    finally:
        gw2.stop()


def test_budget_policy_lowest(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start(tmp_path, upstream, "--aibridge-budget-policy", "lowest")
    key = gw.create_key("gina")
    gw.cli("groups", "create", "big", "--budget", "1000")
    gw.cli("groups", "create", "tiny", "--budget", "0")
    gw.cli("users", "add", "gina", "--group", "big")
    gw.cli("users", "add", "gina", "--group", "tiny")
    gw.start()
    try:
        with pytest.raises(anthropic.PermissionDeniedError):
            ask(claude(gw, key))
        assert len(refusals(gw, "budget")) == 1
    finally:
        gw.stop()


def test_model_allowlists_on_key_and_group(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start(tmp_path, upstream)
    key = json.loads(gw.cli("keys", "create", "--user", "hank", "--models", "claude-sonnet-*", "--json").stdout)["key"]
    gw.start()
    try:
        client = claude(gw, key)
        ask(client, "claude-sonnet-4-5")
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            ask(client, "claude-opus-4-1")
        assert "allowed: claude-sonnet-*" in caught.value.response.json()["error"]["message"]
        # A group allowlist, changed while the gateway runs, applies within the same second.
        admin(gw, "POST", "/admin/groups", {"name": "haiku-only", "models": "claude-haiku-*"}).raise_for_status()
        admin(gw, "POST", "/admin/users/hank/groups", {"group": "haiku-only"}).raise_for_status()
        with pytest.raises(anthropic.PermissionDeniedError):
            ask(client, "claude-sonnet-4-5")
        assert len(refusals(gw, "model", 2)) == 2
    finally:
        gw.stop()


def test_limits_changed_while_running_take_effect_at_once(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start(tmp_path, upstream)
    key = gw.create_key("ivy")
    gw.start()
    try:
        client = claude(gw, key)
        ask(client)
        gw.cli("users", "set", "ivy", "--rpm", "1")  # through the running gateway's admin API
        with pytest.raises(anthropic.RateLimitError):
            ask(client)
        gw.cli("users", "set", "ivy", "--rpm", "none")
        ask(client)
    finally:
        gw.stop()


def test_tpm_counts_recorded_usage_and_metrics_count_refusals(tmp_path: Path, upstream: FakeUpstream) -> None:
    port = free_port()
    gw = start(tmp_path, upstream, "--prometheus-enable", "--prometheus-address", f"127.0.0.1:{port}")
    key = gw.create_key("judy")
    gw.cli("users", "set", "judy", "--tpm", "50")  # one fake answer is 25 input + 12 output tokens
    gw.start()
    try:
        client = claude(gw, key)
        ask(client)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "say hi"}])
        assert raw.headers["anthropic-ratelimit-tokens-limit"] == "50"
        assert raw.headers["anthropic-ratelimit-tokens-remaining"] == "13"  # 50 - the first answer's 37
        with pytest.raises(anthropic.RateLimitError) as caught:
            ask(client)
        assert "50 tokens per minute" in caught.value.response.json()["error"]["message"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=5).text
        assert 'coder_aibridged_limit_rejections_total{reason="tpm"} 1.0' in metrics
        assert "coder_aibridged_inflight_requests 0.0" in metrics
    finally:
        gw.stop()


def test_budget_warning_and_unpriced_models(tmp_path: Path, upstream: FakeUpstream) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES)
    gw = start(tmp_path, upstream, "--aibridge-prices-file", str(prices), "--aibridge-budget-unpriced", "deny",
               "--aibridge-budget-warn-ratio", "0.2")
    key = gw.create_key("kim")
    gw.cli("users", "set", "kim", "--budget", "5")
    gw.start()
    try:
        client = claude(gw, key)
        ask(client)  # a little over 1 USD at the test prices: past a fifth of the budget
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "say hi"}])
        assert "of the 5.00 USD month budget spent" in raw.headers["x-aigw-budget-warning"]
        assert 3.0 < float(raw.headers["x-aigw-budget-remaining-usd"]) < 4.0
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            ask(client, "internal-model-without-price")
        assert "no known price" in caught.value.response.json()["error"]["message"]
    finally:
        gw.stop()
    assert "budget warning: user kim" in gw.output()
