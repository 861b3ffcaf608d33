"""Which coding tool sent a request, and its session id. Pure header logic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# (substring of the lower-cased User-Agent or originator, client name); first match wins.
_USER_AGENTS: tuple[tuple[str, str], ...] = (
    ("claude-cli/", "Claude Code"),
    ("claude-code", "Claude Code"),
    ("codex_exec", "Codex"),
    ("codex_cli_rs", "Codex"),
    ("codex_vscode", "Codex"),
    ("codex", "Codex"),
    ("githubcopilotchat/", "Copilot VS Code"),
    ("copilot-developer-cli", "Copilot CLI"),
    ("copilot/", "Copilot CLI"),
    ("kilo-code", "Kilo Code"),
    ("roo-code", "Roo Code"),
    ("zed/", "Zed"),
    ("cursor", "Cursor"),
    ("crush", "Crush"),
    ("mux/", "Mux"),
    ("litellm", "LiteLLM"),
    ("anthropicbedrock/python", "Anthropic SDK (Python)"),  # AnthropicBedrock/Python <v>
    ("anthropic/python", "Anthropic SDK (Python)"),
    ("anthropic/js", "Anthropic SDK (JS)"),
    ("openai/python", "OpenAI SDK (Python)"),
    ("openai/js", "OpenAI SDK (JS)"),
    ("boto3/", "boto3"),
    ("botocore/", "boto3"),
    ("curl/", "curl"),
    ("python-httpx/", "httpx"),
)

# Session headers, by precedence (Claude Code, Codex, Copilot, Kilo, Mux, Coder Agents).
_SESSION_HEADERS: tuple[str, ...] = (
    "x-claude-code-session-id",
    "session_id",
    "session-id",
    "x-client-session-id",  # Copilot CLI sends both; this one spans the session
    "x-interaction-id",
    "x-kilocode-taskid",
    "x-mux-workspace-id",
    "x-coder-chat-id",
)


def detect_client(headers: Mapping[str, str]) -> str:
    integration = headers.get("copilot-integration-id", "").lower()
    if integration == "copilot-developer-cli":
        return "Copilot CLI"
    if integration.startswith("vscode"):
        return "Copilot VS Code"
    probe = (headers.get("originator", "") + " " + headers.get("user-agent", "")).lower()
    name = next((name for needle, name in _USER_AGENTS if needle in probe), "Unknown")
    # Copilot CLI in bring-your-own-key mode calls the provider through the stock OpenAI /
    # Anthropic JS SDKs (their User-Agent) and marks every call `x-initiator: user|agent`.
    if name in _BARE_JS_SDKS and headers.get("x-initiator", "").lower() in ("user", "agent"):
        return "Copilot CLI"
    return name


_BARE_JS_SDKS = frozenset({"OpenAI SDK (JS)", "Anthropic SDK (JS)", "Unknown"})


def session_id(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> str | None:
    for name in _SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return value[:256]
    return _claude_code_metadata_session(body)


def _claude_code_metadata_session(body: Mapping[str, Any] | None) -> str | None:
    """Claude Code also puts the session in `metadata.user_id` (a JSON string, or `..._session_<id>`)."""
    if not body:
        return None
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            parsed = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            return None
        value = parsed.get("session_id") if isinstance(parsed, dict) else None
        return str(value)[:256] if value else None
    _, sep, tail = user_id.rpartition("_session_")
    return tail[:256] if sep and tail else None


def mask_secret(secret: str | None) -> str | None:
    """A hint that identifies a credential without revealing it (<= 15 chars)."""
    if not secret:
        return None
    if len(secret) < 16:
        return "…" + secret[-2:]
    return secret[:4] + "…" + secret[-4:]
