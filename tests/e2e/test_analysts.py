"""Analysts end to end: thread links from real SDK calls, the audit API and CLI, report, snapshot."""

from __future__ import annotations

import json

import anthropic
import duckdb
import httpx
import openai
import pytest

from tests.gateway_process import Gateway

pytestmark = pytest.mark.e2e

TOOLS = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {}}}]


def api(gw: Gateway, path: str, key: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers={"authorization": f"Bearer {key}"}, trust_env=False, timeout=30)


@pytest.fixture(scope="module")
def agent_turns(gateway: Gateway) -> dict[str, str]:
    """An Anthropic tool loop (two turns) and an OpenAI Responses tool loop, as real agents do them."""
    client = anthropic.Anthropic(base_url=f"{gateway.url}/api/v2/aibridge/anthropic", api_key=gateway.user_key,
                                 max_retries=0)
    messages: list[dict] = [{"role": "user", "content": "weather in Oslo?"}]
    first = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, tools=TOOLS, messages=messages)
    call = next(b for b in first.content if b.type == "tool_use")
    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
    client.messages.create(model="claude-sonnet-4-5", max_tokens=50, tools=TOOLS, messages=messages)
    # A third turn carrying the same chain keeps the root.
    messages += [{"role": "assistant", "content": "It is sunny."},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "again"}]}]
    client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=messages)

    oai = openai.OpenAI(base_url=f"{gateway.url}/api/v2/aibridge/openai/v1", api_key=gateway.user_key,
                        max_retries=0)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    r1 = oai.responses.create(model="gpt-5-codex", input="weather in Rome?", tools=tools)
    fc = next(i for i in r1.output if i.type == "function_call")
    oai.responses.create(model="gpt-5-codex", tools=tools, input=[
        {"role": "user", "content": "weather in Rome?"}, fc.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": fc.call_id, "output": "warm"}])
    gateway.wait_for("select count(*) n from aibridge_interceptions where ended_at is not null",
                     lambda r: r[0]["n"] >= 5)
    return {"anthropic_call": call.id, "openai_call": fc.call_id}


def test_tool_results_link_threads(gateway: Gateway, agent_turns: dict[str, str]) -> None:
    rows = gateway.query("select id, provider_name, thread_parent_id, thread_root_id from aibridge_interceptions "
                         "order by started_at")
    a1, a2, a3, o1, o2 = rows[-5:]
    assert a1["thread_parent_id"] is None and a1["thread_root_id"] is None
    assert a2["thread_parent_id"] == a1["id"] and a2["thread_root_id"] == a1["id"]
    assert a3["thread_parent_id"] == a1["id"] and a3["thread_root_id"] == a1["id"]
    assert o2["thread_parent_id"] == o1["id"] and o2["thread_root_id"] == o1["id"]
    sessions = gateway.query("select session_id, count(*) n from aibridge_interceptions_v "
                             f"where id in ('{a1['id']}', '{a2['id']}', '{a3['id']}') group by 1")
    assert sessions == [{"session_id": a1["id"], "n": 3}]


def test_audit_api_permissions_and_pagination(gateway: Gateway, agent_turns: dict[str, str]) -> None:
    admin_page = api(gateway, "/api/v2/aibridge/interceptions?limit=2", gateway.admin_key)
    assert admin_page.status_code == 200, admin_page.text
    body = admin_page.json()
    assert len(body["interceptions"]) == 2 and body["next_after_id"]
    seen = [r["id"] for r in body["interceptions"]]
    cursor = body["next_after_id"]
    while cursor:
        page = api(gateway, f"/api/v2/aibridge/interceptions?limit=2&after_id={cursor}", gateway.admin_key).json()
        seen += [r["id"] for r in page["interceptions"]]
        cursor = page["next_after_id"]
    total = gateway.query("select count(*) n from aibridge_interceptions")[0]["n"]
    assert len(seen) == len(set(seen)) == total

    other = gateway.create_key("mallory")
    mine = api(gateway, "/api/v2/aibridge/interceptions", other).json()
    assert mine["interceptions"] == []
    assert api(gateway, "/api/v2/aibridge/interceptions?user=alice", other).status_code == 403
    assert api(gateway, f"/api/v2/aibridge/interceptions/{seen[0]}", other).status_code == 403
    whole = api(gateway, f"/api/v2/aibridge/interceptions/{seen[0]}", gateway.user_key)
    assert whole.status_code == 200 and {"tokens", "prompts", "tools", "thoughts"} <= set(whole.json())
    assert api(gateway, "/api/v2/aibridge/interceptions?since=yesterdayish", gateway.admin_key).status_code == 400
    assert api(gateway, "/api/v2/aibridge/interceptions?after_id=garbage", gateway.admin_key).status_code == 400
    assert api(gateway, "/api/v2/aibridge/interceptions?provider=nope", gateway.admin_key).status_code == 400
    sessions = api(gateway, "/api/v2/aibridge/sessions", gateway.user_key)
    assert sessions.status_code == 200 and sessions.json()["sessions"]


def test_cli_while_running(gateway: Gateway, agent_turns: dict[str, str], tmp_path) -> None:
    listed = gateway.cli("interceptions", "list", "--user", "alice", "--limit", "3")
    assert "alice" in listed.stdout and "anthropic" in listed.stdout
    data = json.loads(gateway.cli("interceptions", "list", "--json", "--limit", "1").stdout)
    shown = json.loads(gateway.cli("interceptions", "show", data["interceptions"][0]["id"]).stdout)
    assert shown["id"] == data["interceptions"][0]["id"]
    assert "yesterdayish" in gateway.cli("interceptions", "list", "--since", "yesterdayish", check=False).stderr
    assert gateway.cli("sessions", "list").returncode == 0
    out = tmp_path / "report.html"
    gateway.cli("report", "--since", "30d", "--out", str(out))
    html = out.read_text()
    assert "<svg" in html and "claude-sonnet-4-5" in html and "http" not in html.split("<body", 1)[1][:0]
    snap = gateway.cli("snapshot").stdout.strip().removeprefix("snapshot written: ")
    with duckdb.connect(snap, read_only=True) as conn:
        n = conn.execute("select count(*) from aibridge_interceptions").fetchone()[0]
    assert n >= 5
    missing = gateway.cli("prices", "missing", "--json")
    assert isinstance(json.loads(missing.stdout), list)
