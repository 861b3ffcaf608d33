"""What the real CLIs send (seen in tests/e2e/test_real_clients.py), checked without running them."""

from __future__ import annotations

import pytest

from addons.flow.clients import identify
from addons.wire import anthropic, chat, responses

COPILOT_PROMPT = "<current_datetime>2026-11-28T17:52:20.957+00:00</current_datetime>\n\nsay hi"


@pytest.mark.parametrize(("headers", "client"), [
    # Copilot CLI, bring-your-own-key: stock JS SDK user agents plus x-initiator.
    ({"user-agent": "OpenAI/JS 5.20.1", "x-initiator": "user", "x-interaction-type": "conversation-user"},
     "Copilot CLI"),
    ({"user-agent": "OpenAI/JS 5.20.1", "x-initiator": "agent"}, "Copilot CLI"),
    ({"user-agent": "Anthropic/JS 0.94.0", "x-initiator": "user"}, "Copilot CLI"),
    ({"user-agent": "OpenAI/JS 5.20.1"}, "OpenAI SDK (JS)"),
    ({"user-agent": "Anthropic/JS 0.94.0"}, "Anthropic SDK (JS)"),
    # Copilot normal mode and VS Code say who they are.
    ({"user-agent": "copilot/1.0.102", "copilot-integration-id": "copilot-developer-cli", "x-initiator": "user"},
     "Copilot CLI"),
    ({"user-agent": "GitHubCopilotChat/0.30", "copilot-integration-id": "vscode-chat", "x-initiator": "user"},
     "Copilot VS Code"),
    # Another tool that happens to send x-initiator keeps its own name.
    ({"user-agent": "claude-cli/2.1.197 (external, sdk-cli)", "x-initiator": "user"}, "Claude Code"),
    ({"user-agent": "codex_exec/0.171.0 (Debian 12.0.0; x86_64)", "originator": "codex_exec"}, "Codex"),
])
def test_detect_client(headers: dict[str, str], client: str) -> None:
    assert identify(headers, None).client == client


def test_copilot_clock_is_not_part_of_the_prompt() -> None:
    assert chat.parse_request({"messages": [{"role": "user", "content": COPILOT_PROMPT}]}).prompt == "say hi"
    assert anthropic.parse_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": COPILOT_PROMPT, "cache_control": {"type": "ephemeral"}}]}]}).prompt == "say hi"
    assert responses.parse_request({"input": [{"role": "user", "type": "message", "content": [
        {"type": "input_text", "text": COPILOT_PROMPT}]}]}).prompt == "say hi"
    assert responses.parse_request({"input": COPILOT_PROMPT}).prompt == "say hi"


def test_a_clock_alone_is_not_a_prompt() -> None:
    clock = "<current_datetime>2026-11-28T17:52:20Z</current_datetime>\n"
    assert chat.parse_request({"messages": [{"role": "user", "content": clock}]}).prompt is None
    assert anthropic.parse_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "typed"}, {"type": "text", "text": clock}]}]}).prompt == "typed"


def test_text_without_a_clock_is_kept_verbatim() -> None:
    text = "how many angels can dance on the head of a pin\n"
    assert chat.parse_request({"messages": [{"role": "user", "content": text}]}).prompt == text
    assert anthropic.parse_request({"messages": [{"role": "user", "content": text}]}).prompt == text
    assert responses.parse_request({"input": text}).prompt == text
    later = "what is <current_datetime>x</current_datetime> for?"
    assert chat.parse_request({"messages": [{"role": "user", "content": later}]}).prompt == later
