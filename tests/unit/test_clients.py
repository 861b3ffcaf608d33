"""Client, version and session detection (addons/flow/clients.py) from real request headers.

Three sources: what the pinned CLIs sent to a fake upstream (tests/clients: Claude Code 2.1.197,
Codex 0.171.0, Copilot CLI 1.0.102, opencode 1.18.33; secrets and transport headers left out),
the User-Agents and session headers in Coder's own tests (coder/coder aibridge/clientmeta
client_test.go / session_test.go), and the headers the open-source clients set in their code
(Roo Code's `DEFAULT_HEADERS` and openai-native provider, Cline's request-headers.ts, Kilo
Code's CLI).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from addons.flow import clients
from addons.flow.clients import identify
from tests import txtar

H = dict[str, str]

# -- the pinned CLIs, as captured --------------------------------------------------------------------

OPENCODE_SESSION = "ses_db1c17c30ffey1ecA39ZZra3ql"
OPENCODE_MESSAGES: H = {  # opencode 1.18.33, anthropic provider, POST /v1/messages
    "content-type": "application/json",
    "user-agent": "opencode/1.18.33 ai-sdk/provider-utils/4.0.46 runtime/bun/1.3.14",
    "anthropic-beta": "structured-outputs-2025-11-13", "anthropic-version": "2023-06-01",
    "x-session-affinity": OPENCODE_SESSION, "x-session-id": OPENCODE_SESSION,
    "connection": "keep-alive", "accept": "*/*", "accept-encoding": "gzip, deflate, br, zstd",
}
OPENCODE_RESPONSES: H = {  # opencode 1.18.33, openai provider, POST /v1/responses
    "content-type": "application/json",
    "user-agent": "opencode/1.18.33 (linux 6.18.44-fc-v1272; x64) ai-sdk/provider-utils/4.0.40 runtime/bun/1.3.14",
    "originator": "opencode", "session-id": "ses_db1c15648ffec4pHvmugYq0JNl",
    "x-session-affinity": "ses_db1c15648ffec4pHvmugYq0JNl", "x-session-id": "ses_db1c15648ffec4pHvmugYq0JNl",
    "connection": "keep-alive", "accept": "*/*", "accept-encoding": "gzip, deflate, br, zstd",
}
CLAUDE_SESSION = "2c891603-2031-46cf-a948-79dbfdfc2f3f"
CLAUDE_CODE: H = {  # Claude Code 2.1.197, POST /v1/messages?beta=true
    "accept": "application/json", "content-type": "application/json",
    "user-agent": "claude-cli/2.1.197 (external, sdk-cli)", "x-claude-code-session-id": CLAUDE_SESSION,
    "x-stainless-lang": "js", "x-stainless-package-version": "0.94.0", "x-stainless-runtime": "node",
    "anthropic-beta": "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14",
    "anthropic-version": "2023-06-01", "anthropic-dangerous-direct-browser-access": "true", "x-app": "cli",
}
CLAUDE_CODE_BODY = {"metadata": {"user_id": json.dumps({
    "device_id": "e9a577043c675c39179ec24a8a6a11d2f3db7dae0944a1c058d55d2ad6add602", "account_uuid": "",
    "session_id": CLAUDE_SESSION})}}
CODEX_SESSION = "01a24e40-4d71-7f70-a03a-e723f8e92f42"
CODEX: H = {  # Codex 0.171.0 (custom provider), POST /v1/responses
    "x-codex-beta-features": "remote_compaction_v2", "x-codex-window-id": f"{CODEX_SESSION}:0",
    "x-client-request-id": CODEX_SESSION, "session-id": CODEX_SESSION, "thread-id": CODEX_SESSION,
    "accept": "text/event-stream", "content-type": "application/json", "originator": "codex_exec",
    "user-agent": "codex_exec/0.171.0 (Debian 12.0.0; x86_64) unknown (codex_exec; 0.171.0)",
    "accept-encoding": "zstd,gzip",
}
_STAINLESS: H = {"x-stainless-lang": "js", "x-stainless-runtime": "node", "x-stainless-helper-method": "stream",
                 "x-stainless-retry-count": "0", "accept": "application/json", "content-type": "application/json"}
COPILOT_BYOK_CHAT: H = {**_STAINLESS, "user-agent": "OpenAI/JS 5.20.1", "x-stainless-package-version": "5.20.1",
                        "x-initiator": "user", "x-interaction-type": "conversation-user"}
COPILOT_BYOK_TOOL_TURN: H = {**_STAINLESS, "user-agent": "OpenAI/JS 5.20.1", "x-initiator": "agent"}
COPILOT_BYOK_MESSAGES: H = {**_STAINLESS, "user-agent": "Anthropic/JS 0.94.0", "anthropic-version": "2023-06-01",
                            "x-initiator": "user", "x-interaction-type": "conversation-user"}
COPILOT_CLI: H = {  # Copilot CLI 1.0.102 logged in, to api.individual.githubcopilot.com
    "user-agent": "copilot/1.0.102", "editor-version": "copilot/1.0.102",
    "copilot-integration-id": "copilot-developer-cli", "x-initiator": "user",
    "x-client-session-id": "copilot-session-1", "x-interaction-id": "interaction-1",
}


@pytest.mark.parametrize(("headers", "body", "expected"), [
    pytest.param(OPENCODE_MESSAGES, None, ("OpenCode", "1.18.33", OPENCODE_SESSION), id="opencode-messages"),
    pytest.param(OPENCODE_RESPONSES, None, ("OpenCode", "1.18.33", "ses_db1c15648ffec4pHvmugYq0JNl"),
                 id="opencode-responses"),
    pytest.param(CLAUDE_CODE, CLAUDE_CODE_BODY, ("Claude Code", "2.1.197", CLAUDE_SESSION), id="claude-code"),
    pytest.param({k: v for k, v in CLAUDE_CODE.items() if k != "x-claude-code-session-id"}, CLAUDE_CODE_BODY,
                 ("Claude Code", "2.1.197", CLAUDE_SESSION), id="claude-code-session-in-body"),
    pytest.param(CODEX, None, ("Codex", "0.171.0", CODEX_SESSION), id="codex"),
    pytest.param(COPILOT_BYOK_CHAT, None, ("Copilot CLI", None, None), id="copilot-byok-chat"),
    pytest.param(COPILOT_BYOK_TOOL_TURN, None, ("Copilot CLI", None, None), id="copilot-byok-tool-turn"),
    pytest.param(COPILOT_BYOK_MESSAGES, None, ("Copilot CLI", None, None), id="copilot-byok-messages"),
    pytest.param(COPILOT_CLI, None, ("Copilot CLI", "1.0.102", "copilot-session-1"), id="copilot-cli"),
])
def test_pinned_clis(headers: H, body: dict[str, Any] | None, expected: tuple[str, str | None, str | None]) -> None:
    who = identify(headers, body)
    assert (who.client, who.version, who.session_id) == expected


# -- Coder's test data: every client it detects ------------------------------------------------------


@pytest.mark.parametrize(("headers", "client", "version"), [
    ({"user-agent": "mux/0.19.0-next.2.gcceff159 ai-sdk/openai/3.0.36 ai-sdk/provider-utils/4.0.15 runtime/node.js/22"},
     "Mux", "0.19.0-next.2.gcceff159"),
    ({"user-agent": "xum/0.20.0 ai-sdk/openai/3.0.36 ai-sdk/provider-utils/4.0.15 runtime/node.js/22"},
     "Mux", "0.20.0"),
    ({"user-agent": "claude-cli/2.0.67 (external, cli)"}, "Claude Code", "2.0.67"),
    ({"user-agent": "codex_cli_rs/0.87.0 (Mac OS 26.2.0; arm64) ghostty/1.3.0-main_250877ef"}, "Codex", "0.87.0"),
    ({"user-agent": "Zed/0.219.4+stable.119.abc123 (macos; aarch64)"}, "Zed", "0.219.4+stable.119.abc123"),
    ({"user-agent": "GitHubCopilotChat/0.37.2026011603"}, "Copilot VS Code", "0.37.2026011603"),
    ({"user-agent": "copilot/0.0.403 (client/cli linux v24.11.1)"}, "Copilot CLI", "0.0.403"),
    ({"user-agent": "kilo-code/5.1.0 (darwin 25.2.0; arm64) node/22.21.1"}, "Kilo Code", "5.1.0"),
    ({"originator": "kilo-code"}, "Kilo Code", None),
    ({"user-agent": "roo-code/3.45.0 (darwin 25.2.0; arm64) node/22.21.1"}, "Roo Code", "3.45.0"),
    ({"originator": "roo-code"}, "Roo Code", None),
    ({"user-agent": "coder-agents/v2.24.0 (linux/amd64)"}, "Coder Agents", "v2.24.0"),
    ({"user-agent": "coder-agents/v0.0.0-devel (darwin/arm64)"}, "Coder Agents", "v0.0.0-devel"),
    ({"user-agent": "Charm Crush/0.1.11"}, "Crush", "0.1.11"),
    ({"user-agent": "Charm-Crush/0.2.0 (https://charm.land/crush)"}, "Crush", "0.2.0"),
    ({"user-agent": "connect-es/1.6.1", "x-cursor-client-version": "0.50.0"}, "Cursor", "0.50.0"),
    ({"x-cursor-client-version": "abc123"}, "Cursor", "abc123"),
    ({"user-agent": "opencode/1.16.0 ai-sdk/provider-utils/4.0.23 runtime/bun/1.3.14"}, "OpenCode", "1.16.0"),
    ({"user-agent": "Junie:SNAPSHOT"}, "Junie", "SNAPSHOT"),
    ({"user-agent": "ccclaude-cli/calude-with-wrong-prefix"}, "Unknown", None),
    ({"user-agent": ""}, "Unknown", None),
    ({}, "Unknown", None),
])
def test_coder_documented_clients(headers: H, client: str, version: str | None) -> None:
    who = identify(headers, None)
    assert (who.client, who.version) == (client, version)


H_CC = "x-claude-code-session-id"


@pytest.mark.parametrize(("headers", "body", "session"), [
    # Claude Code: the header, else metadata.user_id (a JSON string, or the legacy `..._session_<id>`).
    ({H_CC: "header-session-id"}, {"metadata": {"user_id": "user_abc123_account_456_session_body-session-id"}},
     "header-session-id"),
    ({H_CC: "aabb-ccdd"}, {"model": "claude-3"}, "aabb-ccdd"),
    ({H_CC: ""}, {"metadata": {"user_id": "user_abc123_account_456_session_f47ac10b-58cc-4372-a567-0e02b2c3d479"}},
     "f47ac10b-58cc-4372-a567-0e02b2c3d479"),
    ({H_CC: "   "}, {"metadata": {"user_id": "user_abc123_account_456_session_f47ac10b-58cc-4372-a567-0e02b2c3d479"}},
     "f47ac10b-58cc-4372-a567-0e02b2c3d479"),
    ({}, {"metadata": {"user_id": '{"device_id":"abc","account_uuid":"","session_id":""}'}}, None),
    ({}, {"metadata": {"user_id": '{"device_id":"abc","account_uuid":""}'}}, None),
    ({}, {"metadata": {"user_id": '{"device_id":'}}, None),
    ({}, {"metadata": {}}, None),
    ({}, {"metadata": {"user_id": "user_abc123_account_456"}}, None),
    ({}, None, None),
])
def test_claude_code_sessions(headers: H, body: dict[str, Any] | None, session: str | None) -> None:
    assert identify({"user-agent": "claude-cli/2.1.197 (external, sdk-cli)", **headers}, body).session_id == session


@pytest.mark.parametrize(("headers", "session"), [
    ({"user-agent": "codex_cli_rs/0.87.0", "session_id": "codex-session-123"}, "codex-session-123"),
    ({"user-agent": "codex_cli_rs/0.87.0", "session-id": "codex-session-456"}, "codex-session-456"),
    ({"user-agent": "codex_cli_rs/0.87.0", "session-id": "new", "session_id": "old"}, "new"),
    ({"user-agent": "codex_cli_rs/0.87.0", "session_id": "  codex-session-123  "}, "codex-session-123"),
    ({"user-agent": "xum/0.20.0", "x-mux-workspace-id": "ws-abc-123"}, "ws-abc-123"),
    ({"user-agent": "GitHubCopilotChat/0.37", "x-interaction-id": "interaction-xyz"}, "interaction-xyz"),
    ({"user-agent": "copilot/0.0.403", "x-client-session-id": "cli-sess-456"}, "cli-sess-456"),
    ({"user-agent": "kilo-code/5.1.0", "x-kilocode-taskid": "task-789"}, "task-789"),
    ({"user-agent": "kilo-code/5.1.0", "x-kilocode-taskid": " "}, None),
    ({"user-agent": "coder-agents/v2.24.0", "x-coder-chat-id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890"},
     "a1b2c3d4-e5f6-7890-abcd-ef1234567890"),
    ({"user-agent": "opencode/1.16.0", "x-opencode-session": "  ses_15a48edefffe7oY0YcIHRv29dD  "},
     "ses_15a48edefffe7oY0YcIHRv29dD"),
    ({"user-agent": "opencode/1.16.0", "x-opencode-session": "zen", "x-session-affinity": "other"}, "zen"),
    ({"user-agent": "opencode/1.16.0", "x-session-affinity": "affinity-session-123"}, "affinity-session-123"),
    # A coding tool's own header only: another tool's session header groups nothing.
    ({"user-agent": "Zed/0.219.4", "session_id": "zed-session"}, None),
    ({"user-agent": "Charm Crush/0.1.11", "x-session-id": "s"}, None),
    ({"x-cursor-client-version": "0.50.0", "session_id": "s"}, None),
    ({"user-agent": "opencode/1.18.33", "session_id": "s", "x-claude-code-session-id": "s"}, None),
    ({"user-agent": "claude-cli/2.1.197", "x-session-affinity": "s"}, None),
    # Libraries and unknown clients have no header of their own: a script may group its calls with any.
    ({"user-agent": "python-httpx/0.28.1", "session-id": "s-1", "x-session-id": "s-2"}, "s-1"),
    ({"user-agent": "Anthropic/Python 0.69.0", "x-claude-code-session-id": "sess-1"}, "sess-1"),
    ({"user-agent": "OpenAI/Python 1.99.0", "session_id": "marker"}, "marker"),
    ({"x-session-id": "anonymous"}, "anonymous"),
])
def test_each_client_reads_its_own_session_header(headers: H, session: str | None) -> None:
    assert identify(headers, None).session_id == session


def test_an_unknown_client_may_carry_claude_codes_metadata_session() -> None:
    body = {"metadata": {"user_id": "user_abc_account_456_session_some-id"}}
    assert identify({"user-agent": "my-script/1.0"}, body).session_id == "some-id"
    assert identify({"user-agent": "Zed/0.219.4"}, body).session_id is None


def test_an_overlong_session_id_is_dropped_not_cut() -> None:
    codex = {"user-agent": "codex_exec/0.171.0"}
    assert identify({**codex, "session-id": "界" * 256}, None).session_id == "界" * 256
    assert identify({**codex, "session-id": "界" * 257}, None).session_id is None
    body = {"metadata": {"user_id": "user_hash_session_" + "x" * 257}}
    assert identify({"user-agent": "claude-cli/2.1.197"}, body).session_id is None


# -- beyond Coder: Roo Code's and Kilo Code's other shapes, Cline, Factory's droid ---------------------


@pytest.mark.parametrize(("headers", "expected"), [
    # Roo Code's OpenAI-compatible providers (DEFAULT_HEADERS); its openai-native provider sends the task id.
    ({"http-referer": "https://github.com/RooVetGit/Roo-Cline", "x-title": "Roo Code", "user-agent": "RooCode/3.54.0"},
     ("Roo Code", "3.54.0", None)),
    ({"user-agent": "roo-code/3.54.0 (darwin 25.0.0; arm64) node/22.0.0", "originator": "roo-code",
      "session_id": "019a-task"}, ("Roo Code", "3.54.0", "019a-task")),
    ({"user-agent": "OpenAI/JS 5.0.0", "x-title": "Roo Code", "x-roo-task-id": "task-1"}, ("Roo Code", None, "task-1")),
    # Kilo Code's CLI is built on opencode: its own X-Title wins over opencode's identity.
    ({"user-agent": "Kilo-Code/7.8.3", "x-title": "Kilo Code", "x-kilocode-taskid": "ses_k",
      "x-session-affinity": "ses_k", "x-session-id": "ses_k"}, ("Kilo Code", "7.8.3", "ses_k")),
    ({"user-agent": "opencode/7.8.3 (darwin 25.0.0; arm64)", "originator": "opencode", "x-title": "Kilo Code"},
     ("Kilo Code", None, None)),
    # Cline: its own provider (User-Agent, X-Title, X-Task-ID) and its Codex provider (originator, session_id).
    ({"http-referer": "https://cline.bot", "x-title": "Cline", "user-agent": "Cline/3.41.0",
      "x-client-type": "vscode", "x-task-id": "task-cline"}, ("Cline", "3.41.0", "task-cline")),
    ({"originator": "cline", "session_id": "s-cline", "user-agent": "Cline/1.0.0"}, ("Cline", "1.0.0", "s-cline")),
    ({"user-agent": "OpenAI/JS 5.0.0", "x-title": "Cline"}, ("Cline", None, None)),
    ({"user-agent": "factory-cli/0.32.1"}, ("Factory Droid", "0.32.1", None)),
    # Libraries and tools keep their names and versions.
    ({"user-agent": "OpenAI/Python 1.99.0"}, ("OpenAI SDK (Python)", "1.99.0", None)),
    ({"user-agent": "Anthropic/Python 0.69.0"}, ("Anthropic SDK (Python)", "0.69.0", None)),
    ({"user-agent": "AnthropicBedrock/Python 0.69.0"}, ("Anthropic SDK (Python)", "0.69.0", None)),
    ({"user-agent": "OpenAI/JS 5.20.1"}, ("OpenAI SDK (JS)", "5.20.1", None)),
    ({"user-agent": "Boto3/1.35.0 md/Botocore#1.35.0 ua/2.0 os/linux#6.1"}, ("boto3", "1.35.0", None)),
    ({"user-agent": "curl/8.5.0"}, ("curl", "8.5.0", None)),
    ({"user-agent": "python-httpx/0.28.1"}, ("httpx", "0.28.1", None)),
    # Not a product prefix, or no version after it.
    ({"user-agent": "my-tool (uses codex_exec)"}, ("Unknown", None, None)),
    ({"user-agent": "opencode/"}, ("OpenCode", None, None)),
    ({"user-agent": "opencode/" + "9" * 100}, ("OpenCode", "9" * 64, None)),
])
def test_other_clients(headers: H, expected: tuple[str, str | None, str | None]) -> None:
    who = identify(headers, None)
    assert (who.client, who.version, who.session_id) == expected


@pytest.mark.skipif(txtar.FIXTURES is None, reason=txtar.SKIP_REASON)
def test_a_user_id_without_claude_codes_session_shape_is_no_session() -> None:
    """Coder's captured Messages request carries `metadata.user_id: session_abc123`: not Claude Code's shape."""
    assert txtar.FIXTURES is not None
    _, sections = txtar.load(txtar.FIXTURES / "anthropic" / "simple_bedrock.txtar")
    body = json.loads(sections["request"])
    assert body["metadata"]["user_id"] == "session_abc123"
    assert identify({"user-agent": "claude-cli/2.1.197 (external, sdk-cli)"}, body).session_id is None


def test_every_session_header_is_read() -> None:
    """identify() only looks up the headers in `_READ`: a tool's session header missing there would never match."""
    tools = [v for v in vars(clients).values() if isinstance(v, clients.Client)]
    assert {h for tool in tools for h in tool.session_headers or ()} <= clients._READ
