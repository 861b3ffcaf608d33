"""The real coding CLIs (Claude Code, Codex, Copilot CLI) against a gateway subprocess in base-URL mode.

The CLIs are pinned in tests/clients/package.json and installed by scripts/test
(`npm install` in tests/clients); each test skips with a reason when its binary
is missing. Every CLI runs with HOME (and CODEX_HOME) in a temp dir, stdin from
/dev/null, and inside a timeout that kills its whole process group.

The fake upstream answers with its defaults: the first call offers tools, so
the model asks for the first tool with `{"x": 1}`; the CLI rejects those
arguments, sends the error back as a tool result, and the second call answers
with text. So each run records two interceptions: the user's turn (prompt,
tool call) and the tool-result turn (no prompt, threaded to the first).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.upstream import ANSWER, FakeUpstream, Seen
from tests.gateway_process import ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY, REPO, Gateway, clean_env

pytestmark = pytest.mark.e2e

BIN = REPO / "tests" / "clients" / "node_modules" / ".bin"
PROMPT = "say hi"
TIMEOUT = 180.0
LLM_PATHS = ("/v1/messages", "/v1/chat/completions", "/v1/responses")
# What the fake upstream's default answers report (tests/fakes/upstream.py), as recorded:
# (input excluding cached, output, cache read, cache write).
FAKE_TOKENS = {
    "messages": (25, 12, 100, 7),
    "chat": (30, 9, 100, 0),  # 130 prompt tokens of which 100 cached
    "responses": (30, 20, 200, 0),  # 230 input tokens of which 200 cached
}
# Variables of the developer's own setup that must not leak into a CLI under test.
_INHERITED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "COPILOT_", "GH_", "GITHUB_", "XDG_")


def binary(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} CLI not installed at {path} (run `npm install` in tests/clients, or scripts/test)")
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str | Path], home: Path, env: dict[str, str], timeout: float = TIMEOUT) -> Run:
    home.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in clean_env().items() if not k.startswith(_INHERITED_PREFIXES)}
    full_env = {**base, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_CACHE_HOME": str(home / ".cache"), "XDG_DATA_HOME": str(home / ".local" / "share"),
                "XDG_STATE_HOME": str(home / ".local" / "state"), "NO_COLOR": "1", **env}
    proc = subprocess.Popen([str(a) for a in argv], env=full_env, cwd=home, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this CLI started
        stdout, stderr = proc.communicate()
        pytest.fail(f"{argv[0]} timed out after {timeout}s\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}")
    return Run(proc.returncode, stdout, stderr)


def llm_calls(upstream: FakeUpstream) -> list[Seen]:
    return [r for r in upstream.requests if r.method == "POST" and r.path.partition("?")[0] in LLM_PATHS]


def known_ids(gateway: Gateway) -> set[str]:
    return {r["id"] for r in gateway.query("select id from aibridge_interceptions")}


def new_interceptions(gateway: Gateway, before: set[str], count: int) -> list[dict[str, Any]]:
    """The interceptions this run produced, oldest first, once all `count` have ended."""
    def fresh(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["id"] not in before and r["ended_at"] is not None]

    rows = gateway.wait_for("select * from aibridge_interceptions order by started_at",
                            lambda rows: len(fresh(rows)) >= count)
    return fresh(rows)


def children(gateway: Gateway, table: str, iid: str) -> list[dict[str, Any]]:
    return gateway.query(f"select * from {table} where interception_id = '{iid}' order by created_at, rowid")


def check_recording(gateway: Gateway, upstream: FakeUpstream, before: set[str], run: Run, *, client: str,
                    model: str, provider_name: str, api: str, thought: str | None) -> list[dict[str, Any]]:
    """What every CLI run must leave behind; returns the interceptions for client-specific checks."""
    detail = f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, detail
    assert ANSWER in run.stdout, detail

    calls = llm_calls(upstream)
    assert len(calls) >= 2, [(c.method, c.path) for c in upstream.requests]
    provider_key = ANTHROPIC_PROVIDER_KEY if api == "messages" else OPENAI_PROVIDER_KEY
    for seen in upstream.requests:
        assert provider_key in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "")[7:])
        assert gateway.user_key not in json.dumps(seen.headers)  # type: ignore[attr-defined]
        assert gateway.user_key not in seen.body.decode(errors="replace")  # type: ignore[attr-defined]
        assert seen.headers.get("accept-encoding") == "identity"

    rows = new_interceptions(gateway, before, len(calls))
    assert len(rows) == len(calls), rows
    for row in rows:
        assert (row["client"], row["model"], row["provider_name"], row["status"], row["credential_kind"]) == (
            client, model, provider_name, "completed", "centralized"), row
        tokens = [(t["input_tokens"], t["output_tokens"], t["cache_read_input_tokens"],
                   t["cache_write_input_tokens"]) for t in children(gateway, "aibridge_token_usages", row["id"])]
        assert tokens == [FAKE_TOKENS[api]], row
        thoughts = [t["content"] for t in children(gateway, "aibridge_model_thoughts", row["id"])]
        assert thoughts == ([thought] if thought else []), row

    first, follow_ups = rows[0], rows[1:]
    assert [p["prompt"] for p in children(gateway, "aibridge_user_prompts", first["id"])] == [PROMPT]
    tools = children(gateway, "aibridge_tool_usages", first["id"])
    offered = first_tool_name(calls[0].json())
    assert [(t["tool"], json.loads(t["input"]), t["injected"]) for t in tools] == [(offered, {"x": 1}, False)]
    for row in follow_ups:  # tool results are not prompts; the turn is threaded to the one that asked
        assert children(gateway, "aibridge_user_prompts", row["id"]) == [], row
        assert (row["thread_parent_id"], row["thread_root_id"]) == (first["id"], first["id"]), row
    return rows


def first_tool_name(body: dict[str, Any]) -> str:
    tools = body.get("tools") or []
    assert tools, "the CLI offered no tools"
    tool = tools[0]
    return tool.get("function", tool)["name"]


# --- Claude Code ---------------------------------------------------------------------------------


def claude_env(base_url: str, key: str) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": key, "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0"}


def test_claude_code(gateway: Gateway, upstream: FakeUpstream, tmp_path: Path) -> None:
    claude = binary("claude")
    argv = [claude, "-p", PROMPT, "--output-format", "json"]

    # What Claude Code sends when it talks to the provider directly: the gateway must not change it.
    direct = run_cli(argv, tmp_path / "direct", claude_env(upstream.url, "sk-ant-direct-run"))
    assert direct.returncode == 0, direct.stderr[-3000:]
    direct_beta = llm_calls(upstream)[0].headers["anthropic-beta"]
    assert "claude-code-20250219" in direct_beta.split(",")
    upstream.reset()

    before = known_ids(gateway)
    home = tmp_path / "via-gateway"
    run = run_cli(argv, home, claude_env(f"{gateway.url}/api/v2/aibridge/anthropic", gateway.user_key))  # type: ignore[attr-defined]
    output = json.loads(run.stdout) if run.returncode == 0 else {}
    assert output.get("is_error") is False, run
    assert ANSWER in output["result"]

    calls = llm_calls(upstream)
    assert [c.path for c in calls] == ["/v1/messages?beta=true"] * len(calls)
    body = calls[0].json()
    assert body["thinking"] == {"type": "adaptive"} and body["stream"] is True
    for seen in calls:
        assert seen.headers["anthropic-beta"] == direct_beta
        assert seen.headers["x-app"] == "cli"
        assert seen.headers["user-agent"].startswith("claude-cli/2.1.197 ")

    rows = check_recording(gateway, upstream, before, run, client="Claude Code", model=body["model"],
                           provider_name="anthropic", api="messages", thought="Let me think.")
    session = output["session_id"]
    assert calls[0].headers["x-claude-code-session-id"] == session
    assert {row["client_session_id"] for row in rows} == {session}
    metadata = json.loads(rows[0]["metadata"])
    assert metadata["user_agent"].startswith("claude-cli/2.1.197 ")


# --- Codex ---------------------------------------------------------------------------------------


def test_codex(gateway: Gateway, upstream: FakeUpstream, tmp_path: Path) -> None:
    codex = binary("codex")
    provider = ('{name="gw",base_url="' + f"{gateway.url}/api/v2/aibridge/openai/v1" + '",env_key="GW_KEY",'
                'wire_api="responses",supports_websockets=false,request_max_retries=0,stream_max_retries=0}')
    before = known_ids(gateway)
    run = run_cli([codex, "exec", "--skip-git-repo-check", "--ephemeral", "-c", "model_provider=gw",
                   "-c", "model=gpt-5-codex", "-c", f"model_providers.gw={provider}", PROMPT],
                  tmp_path, {"CODEX_HOME": str(tmp_path), "GW_KEY": gateway.user_key})  # type: ignore[attr-defined]

    calls = llm_calls(upstream)
    assert calls and [c.path for c in calls] == ["/v1/responses"] * len(calls), run
    body = calls[0].json()
    assert (body["stream"], body["store"]) == (True, False)
    headers = calls[0].headers
    assert headers["originator"] == "codex_exec"
    assert headers["user-agent"].startswith("codex_exec/0.171.0")

    rows = check_recording(gateway, upstream, before, run, client="Codex", model="gpt-5-codex",
                           provider_name="openai", api="responses", thought="Thinking about it.")
    session = headers["session-id"]
    assert re.search(rf"session id: {re.escape(session)}", run.stdout + run.stderr)
    assert {row["client_session_id"] for row in rows} == {session}


# --- Copilot CLI (bring your own key) ------------------------------------------------------------


@pytest.mark.parametrize(("provider_type", "wire_api", "api", "model"), [
    ("openai", "completions", "chat", "gpt-4o-mini"),
    ("openai", "responses", "responses", "gpt-4o-mini"),
    ("anthropic", None, "messages", "claude-sonnet-4-5"),
])
def test_copilot_cli(gateway: Gateway, upstream: FakeUpstream, tmp_path: Path, provider_type: str,
                     wire_api: str | None, api: str, model: str) -> None:
    copilot = binary("copilot")
    base_url = f"{gateway.url}/api/v2/aibridge/{provider_type}" + ("/v1" if provider_type == "openai" else "")
    env = {"COPILOT_OFFLINE": "true", "COPILOT_AUTO_UPDATE": "false", "COPILOT_PROVIDER_BASE_URL": base_url,
           "COPILOT_PROVIDER_TYPE": provider_type, "COPILOT_PROVIDER_API_KEY": gateway.user_key,  # type: ignore[attr-defined]
           "COPILOT_MODEL": model}
    if wire_api:
        env["COPILOT_PROVIDER_WIRE_API"] = wire_api
    before = known_ids(gateway)
    run = run_cli([copilot, "-p", PROMPT, "--allow-all-tools", "-s"], tmp_path, env)

    calls = llm_calls(upstream)
    path = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}[api]
    assert calls and [c.path for c in calls] == [path] * len(calls), run
    assert calls[0].headers["x-initiator"] == "user"
    assert all(c.json()["stream"] is True for c in calls)
    if api == "chat":
        assert calls[0].json()["stream_options"] == {"include_usage": True}

    check_recording(gateway, upstream, before, run, client="Copilot CLI", model=model,
                    provider_name=provider_type, api=api,
                    thought={"chat": None, "responses": "Thinking about it.", "messages": "Let me think."}[api])
