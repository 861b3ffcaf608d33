"""Conformance: replay every captured exchange in ../shared/fixtures/aibridge through the gateway.

For each fixture file and each of its `streaming` / `non-streaming` sections, the
`request` body is sent (with `stream` set to match the section) to the matching
gateway route, and the fake upstream answers with the captured section: SSE
bodies cut into chunks at odd boundaries (inside events, lines and UTF-8
characters), `HTTP/` sections as their status and body. The test then checks

- the client received the bytes the upstream sent (for a Chat Completions stream
  whose request did not ask for usage, minus the usage chunk and the
  `"usage":null` fields the gateway's forced `include_usage` added), and
- the recorded rows equal the values below, which were written down by hand
  from reading each capture (they are deliberately not computed by a parser).

`*_injected_tool*` fixtures are about gateway-executed MCP tools, which aigw does
not do: only the first response is replayed, and what the model asked for is
recorded as an ordinary (non-injected) tool call. `fallthrough` is a passthrough
route: relayed, not recorded. `simple_bedrock` is replayed against the plain
Anthropic instance (Bedrock itself has its own tests).

Skips with a clear reason when ../shared/fixtures is absent.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream, Reply
from tests.gateway_process import ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY, Gateway
from tests.txtar import FIXTURES, SKIP_REASON, load, split_http

pytestmark = pytest.mark.e2e

SECTIONS = ("streaming", "non-streaming")
# Odd chunk sizes: boundaries fall inside field names, JSON strings, CRLFs and UTF-8 sequences.
CHUNK_SIZES = (1, 3, 7, 29, 113, 2, 401, 5, 1009, 11, 2039)


@dataclass(frozen=True)
class Tool:
    call_id: str
    name: str
    input: dict[str, Any] | str  # a dict is compared as parsed JSON, a str (custom tools) verbatim


@dataclass(frozen=True)
class Want:
    status: str = "completed"
    http: int = 200
    tokens: tuple[int, int, int, int] | None = None  # input (uncached), output, cache read, cache write
    tools: tuple[Tool, ...] = ()
    thoughts: tuple[tuple[str, str], ...] = ()  # (source, content)
    error: str | None = None  # a piece of metadata.error


# --- what each capture says, written down by reading it ------------------------------------------

PIN = "how many angels can dance on the head of a pin\n"
PIN_THOUGHT = ("thinking", "This is a classic philosophical question about medieval scholasticism. "
                           "I'll give a thoughtful answer.")
READ_FOO_THOUGHT = ("thinking", 'The user wants me to read a file called "foo". Let me find and read it.')
ADD_PROMPT = "Is 3 + 5 a prime number? Use the add function to calculate the sum."
ADD_THOUGHT = ("reasoning_summary", "The user wants to add 3 and 5. Let me call the add function.")
ADD_3_5 = {"a": 3, "b": 5}

PROMPTS: dict[str, str | None] = {
    "anthropic/fallthrough": None,
    "anthropic/haiku_simple": PIN,
    "anthropic/multi_thinking_builtin_tool": "read the foo file",
    "anthropic/non_stream_error": "yo",
    "anthropic/simple": PIN,
    "anthropic/simple_bedrock": "Hello.",
    "anthropic/single_builtin_tool": "read the foo file",
    "anthropic/single_builtin_tool_parallel": "read the foo and bar files",
    "anthropic/single_injected_tool": "list coder workspace IDs for admin",
    "anthropic/stream_error": "yo",
    "openai/chatcompletions/fallthrough": None,
    "openai/chatcompletions/non_stream_error": PIN,
    "openai/chatcompletions/simple": PIN,
    "openai/chatcompletions/single_builtin_tool": "how large is the README.md file in my current path",
    "openai/chatcompletions/single_injected_tool": "list coder workspace IDs for admin",
    "openai/chatcompletions/stream_error": PIN,
    # Copilot puts `<current_datetime>…</current_datetime>` before the typed text: context, not prompt.
    "openai/chatcompletions/streaming_injected_tool_no_preamble": "list all my coder workspaces",
    "openai/chatcompletions/streaming_injected_tool_nonzero_index":
        'I want you to do to this in order:\n1) create a file in my current directory with name "test.txt"\n'
        "2) list all my coder workspaces",
    "openai/responses/blocking/cached_input_tokens": "This was a large input...",
    "openai/responses/blocking/commentary_builtin_tool": ADD_PROMPT,
    "openai/responses/blocking/conversation": "explain why this is funny.",
    "openai/responses/blocking/custom_tool": "Use the code_exec tool to print hello world to the console.",
    "openai/responses/blocking/http_error": "tell me a joke",
    "openai/responses/blocking/multi_reasoning_builtin_tool": ADD_PROMPT,
    "openai/responses/blocking/prev_response_id": "explain why this is funny.",
    "openai/responses/blocking/simple": "tell me a joke",
    "openai/responses/blocking/single_builtin_tool": ADD_PROMPT,
    "openai/responses/blocking/single_builtin_tool_parallel":
        "Is 3 + 5 a prime number? Also add 10 + 20. Use the add function for both.",
    "openai/responses/blocking/single_injected_tool":
        "list the template params for version aa4e30e4-a086-4df6-a364-1343f1458104",
    "openai/responses/blocking/single_injected_tool_error":
        "delete the template with ID 03cb4fdd-8109-4a22-8e22-bb4975171395, don't ask for confirmation",
    "openai/responses/blocking/summary_and_commentary_builtin_tool": ADD_PROMPT,
    "openai/responses/blocking/wrong_response_format": "hello",
    "openai/responses/streaming/builtin_tool": ADD_PROMPT,
    "openai/responses/streaming/cached_input_tokens": "Test cached input tokens.",
    # The last of several user turns; the AGENTS.md / environment_context items are injected context.
    "openai/responses/streaming/codex_example": "hello",
    "openai/responses/streaming/commentary_builtin_tool": ADD_PROMPT,
    "openai/responses/streaming/conversation": "explain why this is funny.",
    "openai/responses/streaming/custom_tool": "Use the code_exec tool to print hello world to the console.",
    "openai/responses/streaming/http_error": "tell me a joke",
    "openai/responses/streaming/multi_reasoning_builtin_tool": ADD_PROMPT,
    "openai/responses/streaming/prev_response_id": "explain why this is funny.",
    "openai/responses/streaming/simple": "tell me a joke",
    "openai/responses/streaming/single_builtin_tool_parallel":
        "Is 3 + 5 a prime number? Also add 10 + 20. Use the add function for both.",
    "openai/responses/streaming/single_injected_tool": "List my coder templates.",
    "openai/responses/streaming/single_injected_tool_error":
        "Create a new workspace build for an workspace with id: 'non_existing_id'",
    "openai/responses/streaming/stream_error": "hello_stream_error",
    "openai/responses/streaming/stream_failure": "hello_stream_failure",
    "openai/responses/streaming/summary_and_commentary_builtin_tool": ADD_PROMPT,
    "openai/responses/streaming/wrong_response_format": "hello_wrong_format",
}

WANT: dict[str, dict[str, Want]] = {
    # -- Anthropic Messages: usage is cumulative (message_start, then message_delta overwrites).
    "anthropic/simple": {
        "streaming": Want(tokens=(18, 240, 0, 0), thoughts=(PIN_THOUGHT,)),
        "non-streaming": Want(tokens=(18, 254, 0, 0), thoughts=(PIN_THOUGHT,)),
    },
    "anthropic/haiku_simple": {
        "streaming": Want(tokens=(18, 240, 0, 0), thoughts=(PIN_THOUGHT,)),
        "non-streaming": Want(tokens=(18, 254, 0, 0), thoughts=(PIN_THOUGHT,)),
    },
    "anthropic/single_builtin_tool": {
        "streaming": Want(tokens=(2, 61, 13993, 22), thoughts=(READ_FOO_THOUGHT,), tools=(
            Tool("toolu_01RX68weRSquLx6HUTj65iBo", "Read", {"file_path": "/tmp/blah/foo"}),)),
        "non-streaming": Want(tokens=(5, 84, 23490, 0), thoughts=(READ_FOO_THOUGHT,), tools=(
            Tool("toolu_01AusGgY5aKFhzWrFBv9JfHq", "Read", {"file_path": "/tmp/blah/foo"}),)),
    },
    "anthropic/multi_thinking_builtin_tool": {
        "streaming": Want(tokens=(2, 61, 13993, 22), thoughts=(
            READ_FOO_THOUGHT, ("thinking", "I should use the Read tool to access the file contents.")), tools=(
            Tool("toolu_01RX68weRSquLx6HUTj65iBo", "Read", {"file_path": "/tmp/blah/foo"}),)),
        "non-streaming": Want(tokens=(5, 84, 23490, 0), thoughts=(
            READ_FOO_THOUGHT, ("thinking", "I should use the Read tool to access the file contents.")), tools=(
            Tool("toolu_01AusGgY5aKFhzWrFBv9JfHq", "Read", {"file_path": "/tmp/blah/foo"}),)),
    },
    "anthropic/single_builtin_tool_parallel": {
        "streaming": Want(tokens=(2, 72, 13993, 22), thoughts=(
            ("thinking", 'The user wants me to read two files: "foo" and "bar". I\'ll read both of them.'),), tools=(
            Tool("toolu_01ParallelFirst000000000", "Read", {"file_path": "/tmp/blah/foo"}),
            Tool("toolu_01ParallelSecond00000000", "Read", {"file_path": "/tmp/blah/bar"}))),
        "non-streaming": Want(tokens=(5, 95, 23490, 0), thoughts=(
            ("thinking", 'The user wants me to read two files: "foo" and "bar". I\'ll read both of them.'),), tools=(
            Tool("toolu_01ParallelBlockFirst0000", "Read", {"file_path": "/tmp/blah/foo"}),
            Tool("toolu_01ParallelBlockSecond000", "Read", {"file_path": "/tmp/blah/bar"}))),
    },
    "anthropic/single_injected_tool": {
        "streaming": Want(tokens=(7545, 74, 0, 0), tools=(
            Tool("toolu_01TSQLR6R6wBUqoxGPjQKDAj", "bmcp_coder_coder_list_workspaces", {"owner": "admin"}),)),
        "non-streaming": Want(tokens=(7545, 75, 0, 0), tools=(
            Tool("toolu_01QjNz5b3HxAqAccTVnSMsKP", "bmcp_coder_coder_list_workspaces", {"owner": "admin"}),)),
    },
    "anthropic/stream_error": {
        # An SSE `error` event after HTTP 200; message_start had already reported its usage.
        "streaming": Want(status="failed", tokens=(18, 1, 0, 0), error="Overloaded"),
    },
    "anthropic/non_stream_error": {
        "streaming": Want(status="failed", http=400, error="prompt is too long"),
        "non-streaming": Want(status="failed", http=400, error="prompt is too long"),
    },
    "anthropic/simple_bedrock": {
        "streaming": Want(tokens=(10, 10, 0, 0)),
        "non-streaming": Want(tokens=(10, 10, 0, 0)),
    },
    # -- OpenAI Chat Completions: cached_tokens are inside prompt_tokens.
    "openai/chatcompletions/simple": {
        "streaming": Want(tokens=(19, 238, 0, 0)),
        "non-streaming": Want(tokens=(19, 200, 0, 0)),
    },
    "openai/chatcompletions/single_builtin_tool": {
        "streaming": Want(tokens=(60, 15, 0, 0), tools=(
            Tool("call_HjeqP7YeRkoNj0de9e3U4X4B", "read_file", {"path": "README.md"}),)),
        "non-streaming": Want(tokens=(60, 15, 0, 0), tools=(
            Tool("call_KjzAbhiZC6nk81tQzL7pwlpc", "read_file", {"path": "README.md"}),)),
    },
    "openai/chatcompletions/single_injected_tool": {
        "streaming": Want(tokens=(4862, 45, 0, 0), tools=(
            Tool("call_0TxntkwDB66KH8z4RwNqeWrZ", "bmcp_coder_coder_list_workspaces", {"owner": "admin"}),)),
        "non-streaming": Want(tokens=(4862, 45, 0, 0), tools=(
            Tool("call_aEuQAWKQYInC6fQ4z0iatdVP", "bmcp_coder_coder_list_workspaces", {"owner": "admin"}),)),
    },
    "openai/chatcompletions/streaming_injected_tool_no_preamble": {
        # 25716 prompt tokens of which 20470 cached; usage rides on the finish chunk.
        "streaming": Want(tokens=(5246, 65, 20470, 0), tools=(
            Tool("toolu_vrtx_01CvBi1d4qpKTG2PCuc9wDbZ", "bmcp_coder_coder_list_workspaces", {"owner": "me"}),)),
    },
    "openai/chatcompletions/streaming_injected_tool_nonzero_index": {
        # 25939 prompt tokens of which 25429 cached; the call (index 1) has empty arguments.
        "streaming": Want(tokens=(510, 58, 25429, 0), tools=(
            Tool("toolu_vrtx_01DbFqUgk6aAtJ4nDBqzFWDF", "bmcp_coder_coder_list_workspaces", {}),)),
    },
    "openai/chatcompletions/stream_error": {
        "streaming": Want(status="failed", error="The server had an error"),
    },
    "openai/chatcompletions/non_stream_error": {
        "streaming": Want(status="failed", http=400, error="Input tokens exceed the configured limit"),
        "non-streaming": Want(status="failed", http=400, error="Input tokens exceed the configured limit"),
    },
    # -- OpenAI Responses: cached_tokens are inside input_tokens.
    "openai/responses/blocking/simple": {"non-streaming": Want(tokens=(11, 18, 0, 0))},
    "openai/responses/blocking/cached_input_tokens": {"non-streaming": Want(tokens=(129, 44, 11904, 0))},
    "openai/responses/blocking/conversation": {"non-streaming": Want(tokens=(48, 116, 0, 0))},
    "openai/responses/blocking/prev_response_id": {"non-streaming": Want(tokens=(43, 129, 0, 0))},
    "openai/responses/blocking/custom_tool": {"non-streaming": Want(tokens=(64, 148, 0, 0), tools=(
        Tool("call_haf8njtwrVZ1754Gm6fjAtuA", "code_exec", 'print("hello world")'),))},
    "openai/responses/blocking/http_error": {
        "non-streaming": Want(status="failed", http=401, error="Incorrect API key provided")},
    "openai/responses/blocking/single_builtin_tool": {"non-streaming": Want(
        tokens=(58, 18, 0, 0), thoughts=(ADD_THOUGHT,),
        tools=(Tool("call_CJSaa2u51JG996575oVljuNq", "add", ADD_3_5),))},
    "openai/responses/blocking/multi_reasoning_builtin_tool": {"non-streaming": Want(
        tokens=(58, 18, 0, 0),
        thoughts=(ADD_THOUGHT, ("reasoning_summary", "After adding, I will check if the result is prime.")),
        tools=(Tool("call_CJSaa2u51JG996575oVljuNq", "add", ADD_3_5),))},
    "openai/responses/blocking/single_builtin_tool_parallel": {"non-streaming": Want(
        tokens=(65, 30, 0, 0),
        thoughts=(("reasoning_summary", "The user wants two additions: 3+5 and 10+20. I'll call add for both."),),
        tools=(Tool("call_ParallelBlockingFirst001", "add", ADD_3_5),
               Tool("call_ParallelBlockingSecond01", "add", {"a": 10, "b": 20})))},
    "openai/responses/blocking/commentary_builtin_tool": {"non-streaming": Want(
        tokens=(58, 30, 0, 0),
        thoughts=(("commentary", "Checking whether 3 + 5 is prime by calling the add function first."),),
        tools=(Tool("call_A8TkZmIcKtw2Zw952Wc5QVe7", "add", ADD_3_5),))},
    "openai/responses/blocking/summary_and_commentary_builtin_tool": {"non-streaming": Want(
        tokens=(58, 35, 0, 0),
        thoughts=(("reasoning_summary", "I need to add 3 and 5 to check primality."),
                  ("commentary", "Let me calculate the sum first using the add function.")),
        tools=(Tool("call_B9UjYX01Lvvv1XwjDsdmRW3f", "add", ADD_3_5),))},
    "openai/responses/blocking/single_injected_tool": {"non-streaming": Want(
        tokens=(227, 75, 6144, 0), tools=(Tool(
            "call_5AroFIQIK3cm3suliZdux0TB", "bmcp_coder_coder_template_version_parameters",
            {"template_version_id": "aa4e30e4-a086-4df6-a364-1343f1458104"}),))},
    "openai/responses/blocking/single_injected_tool_error": {"non-streaming": Want(
        tokens=(233, 119, 6144, 0), tools=(Tool(
            "call_ITNAVLCwsZSEAlQHq8C8bS5L", "bmcp_coder_coder_delete_template",
            {"template_id": "03cb4fdd-8109-4a22-8e22-bb4975171395"}),))},
    # The body is cut off mid-JSON: relayed as received, recorded as failed.
    "openai/responses/blocking/wrong_response_format": {"non-streaming": Want(status="failed", error="pars")},
    "openai/responses/streaming/simple": {"streaming": Want(tokens=(11, 18, 0, 0))},
    "openai/responses/streaming/cached_input_tokens": {"streaming": Want(tokens=(1165, 54, 15744, 0))},
    # The stream ends in an `error` event (the conversation does not exist), no response.completed.
    "openai/responses/streaming/conversation": {"streaming": Want(status="failed", error="not found")},
    "openai/responses/streaming/prev_response_id": {"streaming": Want(tokens=(43, 182, 0, 0))},
    "openai/responses/streaming/custom_tool": {"streaming": Want(tokens=(64, 340, 0, 0), tools=(
        Tool("call_2gSnF58IEhXLwlbnqbm5XKMd", "code_exec", 'print("hello world")'),))},
    "openai/responses/streaming/http_error": {
        "streaming": Want(status="failed", http=429, error="Rate limit exceeded")},
    "openai/responses/streaming/builtin_tool": {"streaming": Want(
        tokens=(58, 18, 0, 0), thoughts=(ADD_THOUGHT,),
        tools=(Tool("call_7VaiUXZYuuuwWwviCrckxq6t", "add", ADD_3_5),))},
    "openai/responses/streaming/multi_reasoning_builtin_tool": {"streaming": Want(
        tokens=(58, 18, 0, 0),
        thoughts=(ADD_THOUGHT, ("reasoning_summary", "After adding, I will check if the result is prime.")),
        tools=(Tool("call_7VaiUXZYuuuwWwviCrckxq6t", "add", ADD_3_5),))},
    "openai/responses/streaming/single_builtin_tool_parallel": {"streaming": Want(
        tokens=(65, 30, 0, 0),
        thoughts=(("reasoning_summary", "The user wants two additions: 3+5 and 10+20. I'll call add for both."),),
        tools=(Tool("call_ParallelStreamFirst001", "add", ADD_3_5),
               Tool("call_ParallelStreamSecond01", "add", {"a": 10, "b": 20})))},
    "openai/responses/streaming/commentary_builtin_tool": {"streaming": Want(
        tokens=(58, 30, 0, 0),
        thoughts=(("commentary", "Checking whether 3 + 5 is prime by calling the add function first."),),
        tools=(Tool("call_A8TkZmIcKtw2Zw952Wc5QVe7", "add", ADD_3_5),))},
    "openai/responses/streaming/summary_and_commentary_builtin_tool": {"streaming": Want(
        tokens=(58, 35, 0, 0),
        thoughts=(("reasoning_summary", "I need to add 3 and 5 to check primality."),
                  ("commentary", "Let me calculate the sum first using the add function.")),
        tools=(Tool("call_B9UjYX01Lvvv1XwjDsdmRW3f", "add", ADD_3_5),))},
    "openai/responses/streaming/single_injected_tool": {"streaming": Want(
        tokens=(6269, 18, 0, 0),
        tools=(Tool("call_GuuoyhUrVJQbWfHHz0xaX3n9", "bmcp_coder_coder_list_templates", {}),))},
    "openai/responses/streaming/single_injected_tool_error": {"streaming": Want(
        tokens=(6280, 30, 0, 0), tools=(Tool(
            "call_1wHAlwmnxtbUzowDJkmlcpJ4", "bmcp_coder_coder_create_workspace_build",
            {"transition": "start", "workspace_id": "non_existing_id"}),))},
    "openai/responses/streaming/codex_example": {"streaming": Want(
        tokens=(4006, 13, 0, 0), thoughts=(("reasoning_summary", "**Preparing simple response**"),))},
    "openai/responses/streaming/stream_error": {
        "streaming": Want(status="failed", error="Something went wrong")},
    "openai/responses/streaming/stream_failure": {
        "streaming": Want(status="failed", error="The model failed to generate a response.")},
    # A garbled event in the middle (`da\nta: ...`) is relayed as received; the rest still parses.
    "openai/responses/streaming/wrong_response_format": {"streaming": Want(tokens=(11, 18, 0, 0))},
}

PASSTHROUGH = {  # fixture -> the passthrough path it was captured from
    "anthropic/fallthrough": "/api/v2/aibridge/anthropic/v1/models",
    "openai/chatcompletions/fallthrough": "/api/v2/aibridge/openai/v1/models",
}


# --- cases -------------------------------------------------------------------------------------


def fixture_names() -> list[str]:
    assert FIXTURES is not None
    return sorted(str(p.relative_to(FIXTURES).with_suffix("")) for p in FIXTURES.rglob("*.txtar"))


def cases() -> list[Any]:
    if FIXTURES is None:
        return [pytest.param("", "", marks=pytest.mark.skip(reason=SKIP_REASON), id="no-fixtures")]
    out = []
    for name in fixture_names():
        if name in PASSTHROUGH:
            continue
        _, sections = load(FIXTURES / f"{name}.txtar")
        out.extend(pytest.param(name, section, id=f"{name}:{section}") for section in SECTIONS if section in sections)
    return out


def route(name: str) -> tuple[str, str]:
    """(gateway path, provider type) for a fixture."""
    if name.startswith("anthropic/"):
        return "/api/v2/aibridge/anthropic/v1/messages", "anthropic"
    if name.startswith("openai/chatcompletions/"):
        return "/api/v2/aibridge/openai/v1/chat/completions", "openai"
    return "/api/v2/aibridge/openai/v1/responses", "openai"


def chunked(data: bytes) -> Iterator[bytes]:
    pos = 0
    for size in itertools.cycle(CHUNK_SIZES):
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size


def upstream_reply(section: str) -> Reply:
    http_section = split_http(section)
    if http_section is not None:
        status, body = http_section
        head = section.replace("\r\n", "\n").partition("\n\n")[0].split("\n")[1:]
        headers = dict(line.split(": ", 1) for line in head if ": " in line)
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/json")
        return Reply(status=status, headers={"content-type": content_type}, chunks=[body.encode()])
    data = section.encode()
    if section.lstrip().startswith(("event:", "data:")):
        return Reply(headers={"content-type": "text/event-stream"}, chunks=list(chunked(data)))
    return Reply(chunks=list(chunked(data)))


def expected_client_bytes(name: str, body: dict[str, Any], section: str) -> bytes:
    """What the client must receive: the upstream's bytes, minus what the gateway itself asked for."""
    http_section = split_http(section)
    if http_section is not None:
        return http_section[1].encode()
    asked_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if not name.startswith("openai/chatcompletions/") or not body.get("stream") or asked_usage:
        return section.encode()
    # The gateway forced include_usage: it hides the usage-only chunk and the `"usage":null` fields.
    blocks = section.split("\n\n")
    kept = [b for b in blocks if not ('"choices":[]' in b and '"usage":{' in b)]
    return "\n\n".join(kept).replace(',"usage":null', "").encode()


# --- the test ----------------------------------------------------------------------------------


def wait_interception(gateway: Gateway, session: str) -> dict[str, Any]:
    rows = gateway.wait_for(f"select * from aibridge_interceptions where client_session_id = '{session}' "
                            "and ended_at is not null")
    assert len(rows) == 1, f"expected exactly one ended interception for {session}, got {rows}"
    return rows[0]


def rows(gateway: Gateway, table: str, iid: str) -> list[dict[str, Any]]:
    return gateway.query(f"select * from {table} where interception_id = '{iid}' order by created_at, rowid")


@pytest.mark.parametrize(("name", "section_name"), cases())
def test_replay(gateway: Gateway, upstream: FakeUpstream, name: str, section_name: str) -> None:
    assert FIXTURES is not None
    _, sections = load(FIXTURES / f"{name}.txtar")
    want = WANT[name][section_name]
    stream = section_name == "streaming"
    body = json.loads(sections["request"])
    body["stream"] = stream
    section = sections[section_name]
    path, provider = route(name)
    session = f"conformance-{uuid.uuid4()}"
    upstream.queue(upstream_reply(section))

    headers = {"authorization": f"Bearer {gateway.user_key}", "session_id": session}  # type: ignore[attr-defined]
    if provider == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    with httpx.stream("POST", gateway.url + path, json=body, headers=headers, timeout=30,
                      trust_env=False) as response:
        received = response.read()
    assert response.status_code == want.http, received[:500]
    assert received == expected_client_bytes(name, body, section)
    if stream and want.http == 200:
        assert response.headers["content-type"].startswith("text/event-stream")

    sent = upstream.requests[-1]
    assert sent.headers["authorization" if provider == "openai" else "x-api-key"] == (
        f"Bearer {OPENAI_PROVIDER_KEY}" if provider == "openai" else ANTHROPIC_PROVIDER_KEY)
    assert gateway.user_key not in json.dumps(sent.headers)  # type: ignore[attr-defined]
    assert sent.json()["stream"] is stream
    if name.startswith("openai/chatcompletions/") and stream:
        assert sent.json()["stream_options"]["include_usage"] is True

    row = wait_interception(gateway, session)
    iid = row["id"]
    assert (row["provider"], row["model"], row["status"]) == (provider, body["model"], want.status), row
    metadata = json.loads(row["metadata"])
    assert metadata["http_status"] == want.http
    if want.error is None:
        assert "error" not in metadata, metadata
    else:
        assert want.error in metadata.get("error", ""), metadata

    assert [p["prompt"] for p in rows(gateway, "aibridge_user_prompts", iid)] == [PROMPTS[name]]
    tokens = [(t["input_tokens"], t["output_tokens"], t["cache_read_input_tokens"], t["cache_write_input_tokens"])
              for t in rows(gateway, "aibridge_token_usages", iid)]
    assert tokens == ([want.tokens] if want.tokens else [])
    tools = rows(gateway, "aibridge_tool_usages", iid)
    assert [(t["provider_tool_call_id"], t["tool"]) for t in tools] == [(w.call_id, w.name) for w in want.tools]
    for got, expected in zip(tools, want.tools, strict=True):
        assert (json.loads(got["input"]) if isinstance(expected.input, dict) else got["input"]) == expected.input
        assert (got["injected"], got["server_url"], got["invocation_error"]) == (False, None, None)
    thoughts = rows(gateway, "aibridge_model_thoughts", iid)
    assert [(json.loads(t["metadata"])["source"], t["content"]) for t in thoughts] == list(want.thoughts)


@pytest.mark.skipif(FIXTURES is None, reason=SKIP_REASON)
@pytest.mark.parametrize("name", sorted(PASSTHROUGH))
def test_fallthrough_is_relayed_not_recorded(gateway: Gateway, upstream: FakeUpstream, name: str) -> None:
    assert FIXTURES is not None
    _, sections = load(FIXTURES / f"{name}.txtar")
    captured = sections["non-streaming"]
    upstream.queue(Reply(chunks=list(chunked(captured.encode()))))
    session = f"fallthrough-{uuid.uuid4()}"
    headers = {"authorization": f"Bearer {gateway.user_key}", "session_id": session}  # type: ignore[attr-defined]
    response = httpx.get(gateway.url + PASSTHROUGH[name], headers=headers, timeout=30, trust_env=False)
    assert response.status_code == 200
    assert response.content == captured.encode()
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert gateway.user_key not in json.dumps(sent.headers)  # type: ignore[attr-defined]

    # Records are written in order: once a later intercepted call is in, the passthrough would be too.
    marker = f"marker-{uuid.uuid4()}"
    httpx.post(gateway.url + "/api/v2/aibridge/openai/v1/chat/completions", trust_env=False, timeout=30,
               headers={"authorization": f"Bearer {gateway.user_key}", "session_id": marker},  # type: ignore[attr-defined]
               json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    wait_interception(gateway, marker)
    assert gateway.query(f"select id from aibridge_interceptions where client_session_id = '{session}'") == []


@pytest.mark.skipif(FIXTURES is None, reason=SKIP_REASON)
def test_every_fixture_has_expectations() -> None:
    """A new capture must come with hand-written expectations, not be skipped silently."""
    assert FIXTURES is not None
    for name in fixture_names():
        _, sections = load(FIXTURES / f"{name}.txtar")
        if name in PASSTHROUGH:
            assert "non-streaming" in sections
            continue
        assert name in PROMPTS, name
        assert set(WANT.get(name, {})) == {s for s in SECTIONS if s in sections}, name
