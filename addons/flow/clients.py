"""Which coding tool sent a request, its version and its session id. Pure header logic.

The signals are those of Coder's AI Gateway (aibridge's `GuessClient` /
`GuessSessionID`): a User-Agent prefix, the `originator` header, Cursor's
`x-cursor-client-version`. On top of them: GitHub's `copilot-integration-id`, the
`X-Title` that Kilo Code, Roo Code and Cline send, the User-Agents of opencode,
Cline and Factory's droid, and the stock SDKs / HTTP tools for what is left. A
coding tool's session id is read only from the headers *that* tool is known to
send, so one tool's header never groups another tool's requests; a library or an
unknown client has none of its own and may send any of them (a script grouping
its calls).

It runs once per intercepted request: a few dict lookups and `startswith` calls
over a fixed table, no regular expressions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Longer session ids are not the client's id (Coder's column is VARCHAR(256)); they are dropped, not cut.
_MAX_SESSION_ID = 256
_MAX_VERSION = 64


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    # Lower-cased User-Agent prefixes that name this client (first match in table order wins).
    user_agents: tuple[str, ...] = ()
    # Its own session headers, by precedence; None: any tool's (libraries, unknown clients).
    session_headers: tuple[str, ...] | None = ()
    # What precedes the version in its User-Agent: `name/1.2.3`, or `OpenAI/Python 1.2.3`.
    version_after: str = "/"


@dataclass(frozen=True, slots=True)
class Identity:
    client: str
    version: str | None
    session_id: str | None


CLAUDE_CODE = Client("Claude Code", ("claude",), ("x-claude-code-session-id",))  # + metadata.user_id
# Codex renamed `session_id` to `session-id`; Roo Code and Cline reuse Codex's header names.
CODEX = Client("Codex", ("codex",), ("session-id", "session_id"))
ZED = Client("Zed", ("zed/",))
# x-interaction-id spans an agent loop; `vscode-sessionid` would span the whole VS Code window.
COPILOT_VSCODE = Client("Copilot VS Code", ("githubcopilotchat/",), ("x-interaction-id",))
COPILOT_CLI = Client("Copilot CLI", ("copilot/",), ("x-client-session-id",))
KILO_CODE = Client("Kilo Code", ("kilo-code/",), ("x-kilocode-taskid",))
ROO_CODE = Client("Roo Code", ("roo-code/", "roocode/"), ("x-roo-task-id", "session_id"))
CODER_AGENTS = Client("Coder Agents", ("coder-agents/",), ("x-coder-chat-id",))
CRUSH = Client("Crush", ("charm crush/", "charm-crush/"))
MUX = Client("Mux", ("mux/", "xum/"), ("x-mux-workspace-id",))  # Mux was renamed Xum; same header
CURSOR = Client("Cursor")  # its version is in x-cursor-client-version
# opencode's Zen provider sends x-opencode-session; every other provider x-session-affinity (= x-session-id).
OPENCODE = Client("OpenCode", ("opencode/",), ("x-opencode-session", "x-session-affinity", "x-session-id"))
JUNIE = Client("Junie", ("junie:",), version_after=":")
CLINE = Client("Cline", ("cline/",), ("x-task-id", "session_id"))
DROID = Client("Factory Droid", ("factory-cli/",))
UNKNOWN = Client("Unknown", session_headers=None)

# Tools that name themselves in the User-Agent, in Coder's order (Mux before Claude Code, ...).
_PRODUCTS: tuple[Client, ...] = (MUX, CLAUDE_CODE, CODEX, ZED, COPILOT_VSCODE, COPILOT_CLI, KILO_CODE, ROO_CODE,
                                 CODER_AGENTS, CRUSH, OPENCODE, JUNIE, CLINE, DROID)

OPENAI_JS = Client("OpenAI SDK (JS)", ("openai/js",), None, " ")
ANTHROPIC_JS = Client("Anthropic SDK (JS)", ("anthropic/js",), None, " ")
# Libraries and HTTP tools: only when no coding tool identified itself.
_LIBRARIES: tuple[Client, ...] = (
    Client("LiteLLM", ("litellm/",), None),
    Client("Anthropic SDK (Python)", ("anthropic/python", "anthropicbedrock/python"), None, " "),
    ANTHROPIC_JS,
    Client("OpenAI SDK (Python)", ("openai/python",), None, " "),
    OPENAI_JS,
    Client("boto3", ("boto3/", "botocore/"), None),
    Client("curl", ("curl/",), None),
    Client("httpx", ("python-httpx/",), None),
)
# What a client without a session header of its own may send: every tool's, in this precedence.
_ANY_SESSION: tuple[str, ...] = tuple(dict.fromkeys(
    name for client in (CLAUDE_CODE, CODEX, COPILOT_CLI, COPILOT_VSCODE, KILO_CODE, MUX, CODER_AGENTS, OPENCODE,
                        ROO_CODE, CLINE)
    for name in client.session_headers or ()))
# Every header detection reads (each tool's session headers are among _ANY_SESSION).
_READ = frozenset({"user-agent", "copilot-integration-id", "x-title", "originator", "x-cursor-client-version",
                   "x-initiator", *_ANY_SESSION})

# The `originator` header, exactly (Codex's values are all `codex_*`).
_ORIGINATORS: dict[str, Client] = {"kilo-code": KILO_CODE, "roo-code": ROO_CODE, "cline": CLINE,
                                   "opencode": OPENCODE}
# The `X-Title` header (an OpenRouter convention), lower-cased: an app naming itself. It is read before the
# User-Agent because Kilo Code's CLI, built on opencode, may keep opencode's User-Agent and originator.
_TITLES: dict[str, Client] = {"kilo code": KILO_CODE, "roo code": ROO_CODE, "cline": CLINE}
_BARE_JS_SDKS = (OPENAI_JS, ANTHROPIC_JS, UNKNOWN)


def identify(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> Identity:
    """The client, its version (from its own User-Agent, or Cursor's header) and its session id."""
    # One pass over the names, then a lookup per header that matters and is there: a lookup in
    # mitmproxy's Headers scans every field, and most requests carry few of these.
    names = {name.lower() for name in headers} & _READ
    found = {name: headers.get(name, "") for name in names}
    user_agent = found.get("user-agent", "").strip()
    client, version = _detect(found, user_agent)
    return Identity(client.name, version, _session_id(client, found, body))


def _detect(headers: dict[str, str], user_agent: str) -> tuple[Client, str | None]:
    lowered = user_agent.lower()
    integration = headers.get("copilot-integration-id", "").lower()
    if integration == "copilot-developer-cli":
        return COPILOT_CLI, _version(COPILOT_CLI, user_agent, lowered)
    if integration.startswith("vscode"):
        return COPILOT_VSCODE, _version(COPILOT_VSCODE, user_agent, lowered)
    client = _TITLES.get(headers.get("x-title", "").strip().lower())
    if client is not None:
        return client, _version(client, user_agent, lowered)
    client = _match(_PRODUCTS, lowered)
    if client is not None:
        return client, _version(client, user_agent, lowered)
    originator = headers.get("originator", "").strip().lower()
    client = CODEX if originator.startswith("codex") else _ORIGINATORS.get(originator)
    if client is not None:
        return client, _version(client, user_agent, lowered)
    cursor = headers.get("x-cursor-client-version", "").strip()
    if cursor:
        return CURSOR, cursor[:_MAX_VERSION]
    client = _match(_LIBRARIES, lowered) or UNKNOWN
    # Copilot CLI in bring-your-own-key mode calls the provider through the stock OpenAI / Anthropic
    # JS SDKs (their User-Agent, so no Copilot version) and marks every call `x-initiator: user|agent`.
    if client in _BARE_JS_SDKS and headers.get("x-initiator", "").lower() in ("user", "agent"):
        return COPILOT_CLI, None
    return client, _version(client, user_agent, lowered)


def _match(table: tuple[Client, ...], lowered: str) -> Client | None:
    if not lowered:
        return None
    for client in table:
        if lowered.startswith(client.user_agents):
            return client
    return None


def _version(client: Client, user_agent: str, lowered: str) -> str | None:
    """The token after the client's own product name: `claude-cli/2.1.197 (…)` → `2.1.197`."""
    if not client.user_agents or not lowered.startswith(client.user_agents):
        return None  # e.g. Kilo Code recognised by its X-Title behind another User-Agent
    _, sep, rest = user_agent.partition(client.version_after)
    token = rest.split(None, 1)[0].rstrip(",;)") if sep and rest.strip() else ""
    return token[:_MAX_VERSION] or None


def _session_id(client: Client, headers: dict[str, str], body: Mapping[str, Any] | None) -> str | None:
    names = _ANY_SESSION if client.session_headers is None else client.session_headers
    for name in names:
        value = _clean(headers.get(name))
        if value:
            return value
    return _claude_code_metadata_session(body) if names is _ANY_SESSION or client is CLAUDE_CODE else None


def _clean(value: str | None) -> str | None:
    value = value.strip() if value else None
    return value if value and len(value) <= _MAX_SESSION_ID else None


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
        return _clean(value) if isinstance(value, str) else None
    _, sep, tail = user_id.partition("_session_")
    return _clean(tail) if sep else None
