"""Anthropic Messages parsing: synthetic streams/bodies and every captured fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.wire import anthropic
from addons.wire.model import ResponseSummary, Thought, TokenUsage, ToolCall
from addons.wire.sse import SSEDecoder
from tests.sse_replay import fixture_params, replay
from tests.sse_replay import parse_fixture as _parse_fixture
from tests.txtar import FIXTURES, SKIP_REASON

# --- helpers ------------------------------------------------------------------------------------


def sse(*events: dict[str, Any] | str) -> bytes:
    """Named SSE events; a str is sent verbatim as a content_block_delta's data (garbled JSON)."""
    out = b""
    for event in events:
        if isinstance(event, str):
            out += b"event: content_block_delta\ndata: " + event.encode() + b"\n\n"
        else:
            out += b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    return out


def run(data: bytes, cuts: list[int] | None = None) -> ResponseSummary:
    return replay(anthropic.StreamParser(), data, cuts)


def message_start(usage: dict[str, Any], msg_id: str = "msg_1", model: str = "claude-x") -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "usage": usage,
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": body}


def json_delta(index: int, partial: str) -> dict[str, Any]:
    return delta(index, {"type": "input_json_delta", "partial_json": partial})


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(usage: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": usage}


MESSAGE_STOP = {"type": "message_stop"}

TOOL_STREAM = sse(
    message_start(
        {
            "input_tokens": 43,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 100,
            "output_tokens": 1,
            "service_tier": "standard",
        }
    ),
    block_start(0, {"type": "thinking", "thinking": ""}),
    delta(0, {"type": "thinking_delta", "thinking": "Need two "}),
    {"type": "ping"},
    delta(0, {"type": "thinking_delta", "thinking": "files."}),
    delta(0, {"type": "signature_delta", "signature": "c2ln"}),
    stop(0),
    block_start(1, {"type": "text", "text": ""}),
    delta(1, {"type": "text_delta", "text": "Reading both."}),
    stop(1),
    block_start(2, {"type": "tool_use", "id": "toolu_A", "name": "Read", "input": {}}),
    json_delta(2, ""),
    json_delta(2, '{"file_'),
    json_delta(2, 'path": "/a'),
    json_delta(2, '"}'),
    stop(2),
    block_start(3, {"type": "tool_use", "id": "toolu_B", "name": "Read", "input": {}}),
    json_delta(3, '{"file_path"'),
    json_delta(3, ': "/b", "limit": 1'),
    json_delta(3, "0}"),
    stop(3),
    block_start(4, {"type": "redacted_thinking", "data": "opaque"}),
    stop(4),
    message_delta(
        {
            "output_tokens": 90,
            "input_tokens": 61,
            "cache_read_input_tokens": None,
            "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1},
        }
    ),
    MESSAGE_STOP,
)


# --- streams ------------------------------------------------------------------------------------


def test_tool_stream_summary() -> None:
    summary = run(TOOL_STREAM)
    assert summary.response_id == "msg_1"
    assert summary.model == "claude-x"
    assert summary.complete is True
    assert summary.error is None
    assert summary.tool_calls == [
        ToolCall("msg_1", "toolu_A", "Read", '{"file_path":"/a"}'),
        ToolCall("msg_1", "toolu_B", "Read", '{"file_path":"/b","limit":10}'),
    ]
    assert summary.thoughts == [Thought("Need two files.", "thinking", "msg_1")]


def test_usage_is_cumulative_overwrite_never_sum() -> None:
    usage = run(TOOL_STREAM).usage
    # input_tokens changed by message_delta (43 -> 61), output overwritten (1 -> 90), a null
    # cache_read in the delta keeps message_start's value.
    assert usage == TokenUsage(
        provider_response_id="msg_1",
        input_tokens=61,
        output_tokens=90,
        cache_read_input_tokens=100,
        cache_write_input_tokens=5,
        metadata={"service_tier": "standard", "web_search_requests": 2, "web_fetch_requests": 1},
    )


def test_several_message_deltas_keep_the_last_values() -> None:
    summary = run(
        sse(
            message_start({"input_tokens": 10, "output_tokens": 1}),
            message_delta({"output_tokens": 5}),
            message_delta({"output_tokens": 7, "input_tokens": None}),
            MESSAGE_STOP,
        )
    )
    assert summary.usage is not None
    assert (summary.usage.input_tokens, summary.usage.output_tokens) == (10, 7)


def test_usage_metadata_from_cache_creation_and_thinking_details() -> None:
    summary = run(
        sse(
            message_start(
                {
                    "input_tokens": 3,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 30,
                    "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
                }
            ),
            message_delta({"output_tokens": 50, "output_tokens_details": {"thinking_tokens": 40}}),
        )
    )
    assert summary.usage is not None
    assert summary.usage.metadata == {
        "cache_ephemeral_5m_input": 10,
        "cache_ephemeral_1h_input": 20,
        "thinking_tokens": 40,
    }
    assert summary.usage.cache_write_input_tokens == 30
    assert summary.complete is False


def test_truncated_stream_keeps_what_was_seen() -> None:
    cut = TOOL_STREAM.index(b'"index":3,"delta":{"type":"input_json_delta","partial_json":": \\"/b')
    summary = run(TOOL_STREAM[:cut])
    assert summary.complete is False
    assert summary.usage is not None and summary.usage.output_tokens == 1
    assert summary.tool_calls[0] == ToolCall("msg_1", "toolu_A", "Read", '{"file_path":"/a"}')
    # The unfinished call keeps its partial (unparseable) input text as is.
    assert summary.tool_calls[1] == ToolCall("msg_1", "toolu_B", "Read", '{"file_path"')


def test_summary_can_be_taken_repeatedly_mid_stream() -> None:
    decoder, parser = SSEDecoder(), anthropic.StreamParser()
    for event in decoder.feed(TOOL_STREAM[: len(TOOL_STREAM) // 2]):
        parser.on_event(event)
    first = parser.summary()
    assert parser.summary() == first
    for event in decoder.feed(TOOL_STREAM[len(TOOL_STREAM) // 2 :]) + decoder.close():
        parser.on_event(event)
    assert parser.summary() == run(TOOL_STREAM)


def test_error_event_is_terminal() -> None:
    summary = run(
        sse(
            message_start({"input_tokens": 18, "output_tokens": 1}),
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    )
    assert summary.error == "overloaded_error: Overloaded"
    assert summary.complete is True
    assert summary.usage is not None and summary.usage.input_tokens == 18


def test_garbled_and_unknown_events_are_skipped() -> None:
    data = (
        sse(
            message_start({"input_tokens": 1, "output_tokens": 1}),
            block_start(0, {"type": "tool_use", "id": "toolu_X", "name": "Bash", "input": {}}),
            '{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":',
            json_delta(0, '{"cmd": "ls"}'),
            {"type": "content_block_delta", "index": [0], "delta": {"type": "input_json_delta"}},
            {"type": "content_block_delta", "index": 9, "delta": {"type": "input_json_delta", "partial_json": "x"}},
            {"type": "brand_new_event", "payload": [1, 2]},
            {"type": "message_delta", "usage": "not an object"},
            {"type": "content_block_start", "index": 5, "content_block": None},
            stop(0),
            MESSAGE_STOP,
        )
        + b"event: message_delta\ndata: [1,2]\n\nevent: x\n\n: comment\n\n"
    )
    summary = run(data)
    assert summary.tool_calls == [ToolCall("msg_1", "toolu_X", "Bash", '{"cmd":"ls"}')]
    assert summary.complete is True


def test_tool_with_no_arguments_and_start_block_input() -> None:
    summary = run(
        sse(
            message_start({"input_tokens": 1, "output_tokens": 1}),
            block_start(0, {"type": "tool_use", "id": "t0", "name": "NoArgs", "input": {}}),
            json_delta(0, ""),
            stop(0),
            block_start(
                1, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "weather"}}
            ),
            stop(1),
            block_start(2, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}),
            stop(2),
            MESSAGE_STOP,
        )
    )
    assert summary.tool_calls == [
        ToolCall("msg_1", "t0", "NoArgs", "{}"),
        ToolCall("msg_1", "srvtoolu_1", "web_search", '{"query":"weather"}'),
    ]


def test_stream_without_event_lines_still_parses() -> None:
    data = b"".join(
        b"data: " + orjson.dumps(e) + b"\n\n"
        for e in (
            message_start({"input_tokens": 2, "output_tokens": 1}),
            message_delta({"output_tokens": 3}),
            MESSAGE_STOP,
        )
    )
    summary = run(data)
    assert summary.usage is not None and summary.usage.output_tokens == 3
    assert summary.complete


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(TOOL_STREAM)), max_size=25))
def test_any_split_gives_the_same_summary(cuts: list[int]) -> None:
    assert run(TOOL_STREAM, cuts) == run(TOOL_STREAM)


# --- blocking bodies ----------------------------------------------------------------------------


def test_blocking_body() -> None:
    summary = anthropic.parse_response(
        {
            "id": "msg_b",
            "type": "message",
            "model": "claude-y",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "redacted_thinking", "data": "zzz"},
                {"type": "thinking", "thinking": ""},
                {"type": "text", "text": "ok"},
                {"type": "tool_use", "id": "toolu_1", "name": "Grep", "input": {"pattern": "x", "n": 2}},
            ],
            "usage": {
                "input_tokens": 5,
                "output_tokens": 7,
                "cache_read_input_tokens": 11,
                "cache_creation_input_tokens": None,
            },
        }
    )
    assert summary == ResponseSummary(
        response_id="msg_b",
        model="claude-y",
        usage=TokenUsage("msg_b", 5, 7, 11, 0, {}),
        tool_calls=[ToolCall("msg_b", "toolu_1", "Grep", '{"pattern":"x","n":2}')],
        thoughts=[Thought("hmm", "thinking", "msg_b")],
        complete=True,
    )


def test_blocking_error_and_junk_bodies() -> None:
    error = anthropic.parse_response({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
    assert error.error == "rate_limit_error: slow"
    assert anthropic.parse_response({"content": "nope", "usage": 3}) == ResponseSummary(complete=True)
    assert anthropic.parse_response([]) == ResponseSummary(complete=True)  # type: ignore[arg-type]


# --- requests -----------------------------------------------------------------------------------


def test_request_string_prompt() -> None:
    info = anthropic.parse_request({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert (info.model, info.stream, info.prompt, info.correlating_tool_call_id) == ("m", True, "hi", None)


def test_request_skips_system_reminders_and_trailing_system_messages() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\nfiles changed\n</system-reminder>"},
                    {"type": "text", "text": "fix the bug"},
                    {"type": "text", "text": "  <system-reminder>todo list</system-reminder>"},
                ],
            },
            {"role": "system", "content": "late system note"},
        ]
    }
    assert anthropic.parse_request(body).prompt == "fix the bug"


def test_request_tool_results_only() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "run it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "x"}]},
                    {"type": "text", "text": "<system-reminder>noise</system-reminder>"},
                ],
            },
        ]
    }
    info = anthropic.parse_request(body)
    assert info.prompt is None
    assert info.correlating_tool_call_id == "toolu_2"


def test_request_last_message_not_user() -> None:
    body = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "prefill"}]}
    assert anthropic.parse_request(body).prompt is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": "x"},
        {"messages": [None]},
        {"messages": [{"role": "user"}]},
        {"model": 3, "messages": [{"role": "user", "content": 5}]},
        [],
    ],
)
def test_request_junk_never_raises(body: Any) -> None:
    info = anthropic.parse_request(body)
    assert info.prompt is None and info.model is None


# --- captured fixtures --------------------------------------------------------------------------

FIXTURE_DIR = FIXTURES / "anthropic" if FIXTURES else None


def _fixture_params() -> list[Any]:
    return fixture_params(FIXTURE_DIR)


def parse_fixture(path: Path) -> dict[str, Any]:
    return _parse_fixture(anthropic, path, stride=7)


@pytest.mark.parametrize("path", _fixture_params())
def test_every_fixture_parses(path: Path) -> None:
    parsed = parse_fixture(path)
    for name, value in parsed.items():
        if name != "request":
            assert value.complete, name  # every captured stream reaches message_stop or error


def fixture(name: str) -> dict[str, Any]:
    if FIXTURE_DIR is None:
        pytest.skip(SKIP_REASON)
    return parse_fixture(FIXTURE_DIR / f"{name}.txtar")


THINKING_ANGELS = (
    "This is a classic philosophical question about medieval scholasticism. I'll give a thoughtful answer."
)
THINKING_FOO = 'The user wants me to read a file called "foo". Let me find and read it.'


def test_fixture_simple() -> None:
    f = fixture("simple")
    assert f["request"].prompt == "how many angels can dance on the head of a pin\n"
    assert (f["request"].model, f["request"].stream) == ("claude-sonnet-4-0", False)
    stream = f["streaming"]
    assert stream.response_id == "msg_01Pvyf26bY17RcjmWfJsXGBn"
    assert stream.model == "claude-sonnet-4-20250514"
    assert stream.usage == TokenUsage("msg_01Pvyf26bY17RcjmWfJsXGBn", 18, 240, 0, 0, {"service_tier": "standard"})
    assert stream.thoughts == [Thought(THINKING_ANGELS, "thinking", "msg_01Pvyf26bY17RcjmWfJsXGBn")]
    assert stream.tool_calls == []
    blocking = f["non-streaming"]
    assert blocking.usage is not None and blocking.usage.output_tokens == 254
    assert [t.content for t in blocking.thoughts] == [THINKING_ANGELS]


def test_fixture_haiku_simple() -> None:
    f = fixture("haiku_simple")
    assert f["request"].model == "claude-haiku-4-5"
    assert f["request"].prompt == "how many angels can dance on the head of a pin\n"
    assert f["streaming"].model == "claude-haiku-4-5-20251001"


def test_fixture_single_builtin_tool() -> None:
    f = fixture("single_builtin_tool")
    assert f["request"].prompt == "read the foo file"
    stream = f["streaming"]
    assert stream.usage == TokenUsage("msg_015SQewixvT9s4cABCVvUE6g", 2, 61, 13993, 22, {"service_tier": "standard"})
    assert stream.tool_calls == [
        ToolCall(
            "msg_015SQewixvT9s4cABCVvUE6g", "toolu_01RX68weRSquLx6HUTj65iBo", "Read", '{"file_path":"/tmp/blah/foo"}'
        )
    ]
    assert [t.content for t in stream.thoughts] == [THINKING_FOO]
    blocking = f["non-streaming"]
    assert blocking.response_id == "msg_01JHKqEmh7wYuPXqUWUvusfL"
    assert blocking.usage == TokenUsage(
        "msg_01JHKqEmh7wYuPXqUWUvusfL",
        5,
        84,
        23490,
        0,
        {
            "cache_ephemeral_5m_input": 0,
            "cache_ephemeral_1h_input": 0,
            "web_search_requests": 0,
            "service_tier": "standard",
        },
    )
    assert [(c.call_id, c.name, c.input) for c in blocking.tool_calls] == [
        ("toolu_01AusGgY5aKFhzWrFBv9JfHq", "Read", '{"file_path":"/tmp/blah/foo"}')
    ]


def test_fixture_single_builtin_tool_parallel() -> None:
    f = fixture("single_builtin_tool_parallel")
    assert f["request"].prompt == "read the foo and bar files"
    stream = f["streaming"]
    assert [(c.call_id, c.input) for c in stream.tool_calls] == [
        ("toolu_01ParallelFirst000000000", '{"file_path":"/tmp/blah/foo"}'),
        ("toolu_01ParallelSecond00000000", '{"file_path":"/tmp/blah/bar"}'),
    ]
    assert len(stream.thoughts) == 1
    assert stream.usage is not None and stream.usage.output_tokens == 72
    blocking = f["non-streaming"]
    assert [c.call_id for c in blocking.tool_calls] == [
        "toolu_01ParallelBlockFirst0000",
        "toolu_01ParallelBlockSecond000",
    ]
    assert blocking.usage is not None and blocking.usage.output_tokens == 95


def test_fixture_multi_thinking_builtin_tool() -> None:
    f = fixture("multi_thinking_builtin_tool")
    for section in ("streaming", "non-streaming"):
        summary = f[section]
        assert [t.content for t in summary.thoughts] == [
            THINKING_FOO,
            "I should use the Read tool to access the file contents.",
        ]
        assert [(c.name, c.input) for c in summary.tool_calls] == [("Read", '{"file_path":"/tmp/blah/foo"}')]


def test_fixture_single_injected_tool() -> None:
    f = fixture("single_injected_tool")
    assert f["request"].prompt == "list coder workspace IDs for admin"
    assert [(c.call_id, c.name, c.input) for c in f["streaming"].tool_calls] == [
        ("toolu_01TSQLR6R6wBUqoxGPjQKDAj", "bmcp_coder_coder_list_workspaces", '{"owner":"admin"}')
    ]
    follow_up = f["streaming/tool-call"]
    assert follow_up.response_id == "msg_01LZSVzMCLivzXrp6ZnTcmeG"
    assert follow_up.usage is not None and (follow_up.usage.input_tokens, follow_up.usage.output_tokens) == (7763, 128)
    assert follow_up.tool_calls == []
    assert f["non-streaming/tool-call"].usage.output_tokens == 129  # type: ignore[union-attr]


def test_fixture_stream_error() -> None:
    f = fixture("stream_error")
    assert f["request"].prompt == "yo" and f["request"].stream is True
    stream = f["streaming"]
    assert stream.error == "api_error: Overloaded"
    assert stream.complete is True
    assert stream.usage is not None and (stream.usage.input_tokens, stream.usage.output_tokens) == (18, 1)


def test_fixture_non_stream_error() -> None:
    f = fixture("non_stream_error")
    for section in ("streaming", "non-streaming"):
        assert f[section].error == "invalid_request_error: prompt is too long: 205429 tokens > 200000 maximum"
        assert f[section].usage is None


def test_fixture_simple_bedrock() -> None:
    f = fixture("simple_bedrock")
    assert (f["request"].prompt, f["request"].stream) == ("Hello.", True)
    assert f["streaming"].usage == TokenUsage("msg_bdrk_01Test", 10, 10, 0, 0, {})
    assert f["non-streaming"].usage == TokenUsage("msg_bdrk_01Test", 10, 10, 0, 0, {})


def test_fixture_fallthrough_is_not_a_message() -> None:
    summary = fixture("fallthrough")["non-streaming"]
    assert summary == ResponseSummary(complete=True)


def test_text_deltas_and_pings_are_not_json_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real_loads = anthropic.loads_object
    monkeypatch.setattr(anthropic, "loads_object", lambda data: parsed.append(data) or real_loads(data))
    data = sse(
        message_start({"input_tokens": 1, "output_tokens": 1}),
        block_start(0, {"type": "text", "text": ""}),
        *[delta(0, {"type": "text_delta", "text": f"word {i} "}) for i in range(50)],
        {"type": "ping"},
        delta(0, {"type": "text_delta", "text": "thinking_delta"}),  # mentions a marker: parsed, harmless
        stop(0),
        MESSAGE_STOP,
    )
    summary = run(data)
    assert summary.complete and summary.thoughts == []
    assert len(parsed) == 3  # message_start, content_block_start and the text that names a marker
