"""Chat Completions parsing: synthetic chunk streams/bodies and every captured fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.wire import chat
from addons.wire.model import ResponseSummary, TokenUsage, ToolCall
from addons.wire.sse import SSEDecoder, SSEEvent
from tests.sse_replay import fixture_params, replay
from tests.sse_replay import parse_fixture as _parse_fixture
from tests.txtar import FIXTURES, SKIP_REASON, load

# --- helpers ------------------------------------------------------------------------------------


def sse(*chunks: dict[str, Any] | str) -> bytes:
    """`data:` lines; a str is sent verbatim (for [DONE] and garbled JSON)."""
    return b"".join(b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n" for c in chunks)


def run(data: bytes, cuts: list[int] | None = None) -> ResponseSummary:
    return replay(chat.StreamParser(), data, cuts)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, index: int = 0, **extra: Any) -> dict:
    choices = [] if delta is None else [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-x",
        "choices": choices,
        "usage": None,
        **extra,
    }


def tool_fragment(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict:
    fragment: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        fragment.update(id=call_id, type="function")
        fragment["function"]["name"] = name
    return {"tool_calls": [fragment]}


USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "total_tokens": 120,
    "prompt_tokens_details": {"cached_tokens": 60, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 8,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

PARALLEL_STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me look."}),
    chunk(tool_fragment(0, "", "call_a", "read_file")),
    chunk(tool_fragment(0, '{"pa')),
    chunk(tool_fragment(1, "", "call_b", "grep")),
    chunk(tool_fragment(0, 'th": "a.txt"}')),
    chunk(tool_fragment(1, '{"pattern":')),
    chunk(tool_fragment(1, ' "TODO"}')),
    chunk({}, finish="tool_calls"),
    chunk(None, usage=USAGE),
    "[DONE]",
)


# --- streams ------------------------------------------------------------------------------------


def test_parallel_tool_calls_and_usage() -> None:
    summary = run(PARALLEL_STREAM)
    assert summary.response_id == "chatcmpl-1"
    assert summary.model == "gpt-x"
    assert summary.complete is True
    assert summary.tool_calls == [
        ToolCall("chatcmpl-1", "call_a", "read_file", '{"path":"a.txt"}'),
        ToolCall("chatcmpl-1", "call_b", "grep", '{"pattern":"TODO"}'),
    ]
    assert summary.usage == TokenUsage(
        "chatcmpl-1", 40, 20, 60, 0, {"reasoning_tokens": 8, "total_tokens": 120, "prompt_tokens": 100}
    )


def test_cache_write_tokens_are_subtracted_from_input() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 50},
    }
    summary = chat.parse_response({"id": "x", "usage": usage})
    assert summary.usage is not None
    assert (
        summary.usage.input_tokens,
        summary.usage.cache_read_input_tokens,
        summary.usage.cache_write_input_tokens,
    ) == (20, 30, 50)


def test_tool_index_not_starting_at_zero() -> None:
    summary = run(
        sse(
            {
                "choices": [{"index": 0, "delta": {"content": "Listing", "role": "assistant"}}],
                "id": "msg_1",
                "model": "m",
            },
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "content": None,
                            "tool_calls": [
                                {"function": {"name": "list"}, "id": "toolu_1", "index": 1, "type": "function"}
                            ],
                        },
                    }
                ],
                "id": "msg_1",
            },
            {
                "choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": ""}, "index": 1}]}}],
                "id": "msg_1",
            },
            {
                "choices": [{"finish_reason": "tool_calls", "index": 0, "delta": {"content": None}}],
                "id": "msg_1",
                "usage": {"completion_tokens": 5, "prompt_tokens": 50, "prompt_tokens_details": {"cached_tokens": 40}},
            },
            "[DONE]",
        )
    )
    assert summary.tool_calls == [ToolCall("msg_1", "toolu_1", "list", "{}")]
    assert summary.usage == TokenUsage("msg_1", 10, 5, 40, 0, {"prompt_tokens": 50})


def test_tool_calls_in_several_choices_are_kept_apart() -> None:
    summary = run(
        sse(
            chunk(tool_fragment(0, "", "call_x", "f"), index=0),
            chunk(tool_fragment(0, "", "call_y", "g"), index=1),
            chunk(tool_fragment(0, '{"a":1}'), index=1),
            chunk(tool_fragment(0, '{"b":2}'), index=0),
        )
    )
    assert [(c.call_id, c.input) for c in summary.tool_calls] == [("call_x", '{"b":2}'), ("call_y", '{"a":1}')]


def test_custom_tool_call_keeps_raw_input() -> None:
    summary = run(
        sse(
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "call_c", "type": "custom", "custom": {"name": "patch", "input": ""}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "custom": {"input": "*** Begin Patch\n"}}]}),
            chunk({"tool_calls": [{"index": 0, "custom": {"input": "*** End Patch"}}]}),
            "[DONE]",
        )
    )
    assert summary.tool_calls == [ToolCall("chatcmpl-1", "call_c", "patch", "*** Begin Patch\n*** End Patch")]


def test_interrupted_stream_has_no_usage() -> None:
    cut = PARALLEL_STREAM.index(b'th\\": \\"a.txt')
    summary = run(PARALLEL_STREAM[:cut])
    assert summary.usage is None
    assert summary.complete is False
    assert summary.tool_calls == [
        ToolCall("chatcmpl-1", "call_a", "read_file", '{"pa'),
        ToolCall("chatcmpl-1", "call_b", "grep", "{}"),
    ]


def test_error_chunk() -> None:
    summary = run(
        sse(
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "The"}),
            {"error": {"message": "The server had an error", "type": "server_error"}},
        )
    )
    assert summary.error == "server_error: The server had an error"
    assert summary.complete is False
    assert summary.usage is None


def test_garbled_chunks_are_skipped() -> None:
    summary = run(
        sse(
            chunk({"role": "assistant"}),
            '{"id": "chatcmpl-1", "choices": [{"delta": {"tool_calls": [',
            chunk(tool_fragment(0, "", "call_a", "f")),
            chunk({"tool_calls": "nope"}),
            chunk({"tool_calls": [None, {"index": "x"}]}),
            {"choices": "nope", "usage": 7},
            "[1, 2]",
            chunk(tool_fragment(0, "{}")),
            "[DONE]",
        )
        + b": comment\n\n"
    )
    assert summary.tool_calls == [ToolCall("chatcmpl-1", "call_a", "f", "{}")]
    assert summary.complete is True


def test_text_chunks_are_not_json_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real_loads = chat.loads_object
    monkeypatch.setattr(chat, "loads_object", lambda data: parsed.append(data) or real_loads(data))
    run(
        sse(
            chunk({"role": "assistant", "content": ""}),
            *[chunk({"content": f"w{i}"}) for i in range(40)],
            chunk({"content": "usage"}, obfuscation="x"),  # mentions "usage": parsed, harmless
            chunk({}, finish="stop"),
            chunk(None, usage=USAGE),
            "[DONE]",
        )
    )
    assert len(parsed) == 4


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(PARALLEL_STREAM)), max_size=25))
def test_any_split_gives_the_same_summary(cuts: list[int]) -> None:
    assert run(PARALLEL_STREAM, cuts) == run(PARALLEL_STREAM)


# --- usage-only chunk -------------------------------------------------------------------------


def event(data: str | None) -> SSEEvent:
    return SSEEvent(None, data, b"")


def test_is_usage_only_chunk() -> None:
    assert chat.is_usage_only_chunk(event(orjson.dumps(chunk(None, usage=USAGE)).decode()))
    assert chat.is_usage_only_chunk(event('{"id":"x","choices": [],"usage": {"prompt_tokens":1}}  '))
    assert not chat.is_usage_only_chunk(event(orjson.dumps(chunk({"content": "x"})).decode()))
    assert not chat.is_usage_only_chunk(event(orjson.dumps(chunk(None)).decode()))  # usage null
    assert not chat.is_usage_only_chunk(event(orjson.dumps(chunk({}, finish="stop", usage=USAGE)).decode()))
    assert not chat.is_usage_only_chunk(event("[DONE]"))
    assert not chat.is_usage_only_chunk(event(None))
    assert not chat.is_usage_only_chunk(event('{"choices": [], "usage": {'))


def test_client_wants_usage() -> None:
    assert chat.client_wants_usage({"stream_options": {"include_usage": True}})
    assert not chat.client_wants_usage({"stream_options": {"include_usage": False}})
    assert not chat.client_wants_usage({"stream_options": None})
    assert not chat.client_wants_usage({})


# --- blocking bodies ----------------------------------------------------------------------------


def test_blocking_body_with_tools() -> None:
    summary = chat.parse_response(
        {
            "id": "chatcmpl-b",
            "model": "gpt-y",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"x": [1, 2]}'},
                            },
                            {"id": "call_2", "type": "custom", "custom": {"name": "raw", "input": "free text"}},
                            {"id": "call_3", "type": "function", "function": {"name": "g", "arguments": "not json"}},
                        ],
                    },
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        }
    )
    assert summary == ResponseSummary(
        response_id="chatcmpl-b",
        model="gpt-y",
        usage=TokenUsage("chatcmpl-b", 9, 3, 0, 0, {"total_tokens": 12, "prompt_tokens": 9}),
        tool_calls=[
            ToolCall("chatcmpl-b", "call_1", "f", '{"x":[1,2]}'),
            ToolCall("chatcmpl-b", "call_2", "raw", "free text"),
            ToolCall("chatcmpl-b", "call_3", "g", "not json"),
        ],
        complete=True,
        finish_reasons=["tool_calls"],
    )


def test_blocking_junk() -> None:
    assert chat.parse_response({"choices": [None, {"message": {"tool_calls": [3]}}]}) == ResponseSummary(complete=True)
    assert chat.parse_response("x") == ResponseSummary(complete=True)  # type: ignore[arg-type]


# --- requests -----------------------------------------------------------------------------------


def test_request_prompt_from_string_and_parts() -> None:
    assert chat.parse_request({"messages": [{"role": "user", "content": "hi"}]}).prompt == "hi"
    body = {
        "model": "gpt",
        "stream": 1,
        "messages": [
            {"role": "system", "content": "be nice"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "look at this"}, {"type": "image_url", "image_url": {}}],
            },
            {"role": "developer", "content": "trailing instruction"},
        ],
    }
    info = chat.parse_request(body)
    assert (info.model, info.stream, info.prompt) == ("gpt", True, "look at this")


def test_request_tool_result_last() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "call_1"}, {"id": "call_2"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a"},
            {"role": "tool", "tool_call_id": "call_2", "content": "b"},
        ]
    }
    info = chat.parse_request(body)
    assert (info.prompt, info.correlating_tool_call_id) == (None, "call_2")


def test_request_tool_result_followed_by_user_text() -> None:
    body = {
        "messages": [
            {"role": "tool", "tool_call_id": "call_1", "content": "a"},
            {"role": "user", "content": "and now?"},
        ]
    }
    info = chat.parse_request(body)
    assert (info.prompt, info.correlating_tool_call_id) == ("and now?", None)


def test_request_last_message_assistant() -> None:
    body = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert chat.parse_request(body).prompt is None


@pytest.mark.parametrize("body", [{}, {"messages": None}, {"messages": [1]}, {"messages": [{"role": "user"}]}, []])
def test_request_junk_never_raises(body: Any) -> None:
    assert chat.parse_request(body).prompt is None


# --- captured fixtures --------------------------------------------------------------------------

FIXTURE_DIR = FIXTURES / "openai" / "chatcompletions" if FIXTURES else None


def _fixture_params() -> list[Any]:
    return fixture_params(FIXTURE_DIR)


def parse_fixture(path: Path) -> dict[str, Any]:
    return _parse_fixture(chat, path, stride=11)


def usage_only_chunks(path: Path, section: str = "streaming") -> int:
    _, sections = load(path)
    decoder = SSEDecoder()
    return sum(chat.is_usage_only_chunk(e) for e in decoder.feed(sections[section].encode()) + decoder.close())


@pytest.mark.parametrize("path", _fixture_params())
def test_every_fixture_parses(path: Path) -> None:
    for name, value in parse_fixture(path).items():
        if name != "request":
            assert value.complete or value.error, name  # [DONE], or a reported failure


def fixture(name: str) -> dict[str, Any]:
    if FIXTURE_DIR is None:
        pytest.skip(SKIP_REASON)
    return parse_fixture(FIXTURE_DIR / f"{name}.txtar")


def test_fixture_simple() -> None:
    f = fixture("simple")
    assert f["request"].prompt == "how many angels can dance on the head of a pin\n"
    assert (f["request"].model, f["request"].stream) == ("gpt-4.1", False)
    stream = f["streaming"]
    assert stream.response_id == "chatcmpl-BwoiPTGRbKkY5rncfaM0s9KtWrq5N"
    assert stream.model == "gpt-4.1-2025-04-14"
    assert stream.usage == TokenUsage(
        "chatcmpl-BwoiPTGRbKkY5rncfaM0s9KtWrq5N", 19, 238, 0, 0, {"total_tokens": 257, "prompt_tokens": 19}
    )
    assert stream.complete and stream.tool_calls == []
    assert f["non-streaming"].usage.output_tokens == 200  # type: ignore[union-attr]
    assert FIXTURE_DIR is not None and usage_only_chunks(FIXTURE_DIR / "simple.txtar") == 1


def test_fixture_single_builtin_tool() -> None:
    f = fixture("single_builtin_tool")
    assert f["request"].prompt == "how large is the README.md file in my current path"
    stream = f["streaming"]
    assert stream.tool_calls == [
        ToolCall(
            "chatcmpl-BwkwXxA0yAyLKZelloERJWtxKor9z",
            "call_HjeqP7YeRkoNj0de9e3U4X4B",
            "read_file",
            '{"path":"README.md"}',
        )
    ]
    assert stream.usage is not None and (stream.usage.input_tokens, stream.usage.output_tokens) == (60, 15)
    blocking = f["non-streaming"]
    assert [(c.call_id, c.name, c.input) for c in blocking.tool_calls] == [
        ("call_KjzAbhiZC6nk81tQzL7pwlpc", "read_file", '{"path":"README.md"}')
    ]


def test_fixture_single_injected_tool() -> None:
    f = fixture("single_injected_tool")
    assert [(c.call_id, c.name, c.input) for c in f["streaming"].tool_calls] == [
        ("call_0TxntkwDB66KH8z4RwNqeWrZ", "bmcp_coder_coder_list_workspaces", '{"owner":"admin"}')
    ]
    follow_up = f["streaming/tool-call"].usage
    assert (follow_up.input_tokens, follow_up.cache_read_input_tokens, follow_up.output_tokens) == (185, 4864, 60)


def test_fixture_streaming_injected_tool_nonzero_index() -> None:
    f = fixture("streaming_injected_tool_nonzero_index")
    request = f["request"]
    assert request.stream is True and request.model == "claude-haiku-4.5"
    assert request.prompt is not None and request.prompt.endswith("2) list all my coder workspaces")
    stream = f["streaming"]
    assert stream.response_id == "msg_vrtx_01Fiieb5Z3kqJf9a3FwvLkky"
    assert stream.tool_calls == [
        ToolCall(
            "msg_vrtx_01Fiieb5Z3kqJf9a3FwvLkky",
            "toolu_vrtx_01DbFqUgk6aAtJ4nDBqzFWDF",
            "bmcp_coder_coder_list_workspaces",
            "{}",
        )
    ]
    # Copilot puts usage on the finish_reason chunk, not a separate choices:[] chunk.
    assert stream.usage == TokenUsage(
        "msg_vrtx_01Fiieb5Z3kqJf9a3FwvLkky", 510, 58, 25429, 0, {"total_tokens": 25997, "prompt_tokens": 25939}
    )
    assert (
        FIXTURE_DIR is not None and usage_only_chunks(FIXTURE_DIR / "streaming_injected_tool_nonzero_index.txtar") == 0
    )


def test_fixture_streaming_injected_tool_no_preamble() -> None:
    f = fixture("streaming_injected_tool_no_preamble")
    stream = f["streaming"]
    assert [(c.call_id, c.input) for c in stream.tool_calls] == [
        ("toolu_vrtx_01CvBi1d4qpKTG2PCuc9wDbZ", '{"owner":"me"}')
    ]
    assert stream.usage is not None and (stream.usage.input_tokens, stream.usage.cache_read_input_tokens) == (
        5246,
        20470,
    )


def test_fixture_stream_error() -> None:
    stream = fixture("stream_error")["streaming"]
    assert stream.error == "server_error: The server had an error while processing your request. Sorry about that!"
    assert stream.usage is None
    assert stream.complete is False
    assert stream.response_id == "chatcmpl-BwoiPTGRbKkY5rncfaM0s9KtWrq5N"


def test_fixture_non_stream_error() -> None:
    f = fixture("non_stream_error")
    for section in ("streaming", "non-streaming"):
        assert f[section].error is not None
        assert f[section].error.startswith("context_length_exceeded: Input tokens exceed the configured limit")


def test_fixture_request_wants_usage() -> None:
    if FIXTURE_DIR is None:
        pytest.skip(SKIP_REASON)
    wants = {
        path.stem: chat.client_wants_usage(orjson.loads(load(path)[1]["request"]))
        for path in FIXTURE_DIR.glob("*.txtar")
        if "request" in load(path)[1]
    }
    assert wants["simple"] is False
    assert wants["streaming_injected_tool_nonzero_index"] is True
