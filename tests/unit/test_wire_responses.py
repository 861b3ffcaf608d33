"""Responses API parsing: synthetic streams/bodies (incl. Copilot quirks) and every captured fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.wire import responses
from addons.wire.model import ResponseSummary, Thought, TokenUsage, ToolCall
from tests.sse_replay import fixture_params, replay
from tests.sse_replay import parse_fixture as _parse_fixture
from tests.txtar import FIXTURES, SKIP_REASON

# --- helpers ------------------------------------------------------------------------------------


def sse(*events: dict[str, Any] | tuple[str, str]) -> bytes:
    """Named events; a (name, raw data) tuple is sent verbatim (for garbled JSON)."""
    out = b""
    for event in events:
        if isinstance(event, tuple):
            out += f"event: {event[0]}\ndata: {event[1]}\n\n".encode()
        else:
            out += b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    return out


def run(data: bytes, cuts: list[int] | None = None) -> ResponseSummary:
    return replay(responses.StreamParser(), data, cuts)


_sequence = iter(range(10**9))
_item_ids = iter(range(10**9))


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields, "sequence_number": next(_sequence)}


def rotating_id() -> str:
    """GitHub Copilot sends a fresh item_id on every event of the same item."""
    return f"rotated-{next(_item_ids)}"


def response(status: str, output: list[Any] | None = None, usage: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-5.3-codex",
        "status": status,
        "output": output or [],
        "usage": usage,
        **extra,
    }


USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
    "output_tokens": 105,
    "output_tokens_details": {"reasoning_tokens": 44},
    "total_tokens": 1105,
}
COPILOT_USAGE = {
    "token_details": [
        {"batch_size": 1000000, "cost_per_batch": 175000000000, "token_count": 300, "token_type": "input"}
    ],
    "total_nano_aiu": 150325000,
}
FUNCTION_ITEM_A = {
    "id": "fc_A",
    "type": "function_call",
    "status": "completed",
    "arguments": '{"command": "ls"}',
    "call_id": "call_A",
    "name": "shell",
}
FUNCTION_ITEM_B = {
    "id": "fc_B",
    "type": "function_call",
    "status": "completed",
    "arguments": '{"path":"x"}',
    "call_id": "call_B",
    "name": "read",
}
REASONING_ITEM = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "**Planning**"}, {"type": "summary_text", "text": "Then act."}],
}

COPILOT_STREAM = sse(
    ev("response.created", response=response("in_progress")),
    ev("response.in_progress", response=response("in_progress")),
    ev("response.output_item.added", output_index=0, item={"id": rotating_id(), "type": "reasoning", "summary": []}),
    ev(
        "response.reasoning_summary_part.added",
        item_id=rotating_id(),
        output_index=0,
        summary_index=0,
        part={"type": "summary_text", "text": ""},
    ),
    ev("response.reasoning_summary_text.delta", item_id=rotating_id(), output_index=0, summary_index=0, delta="**Plan"),
    ev("response.reasoning_summary_text.delta", item_id=rotating_id(), output_index=0, summary_index=0, delta="ning**"),
    ev(
        "response.reasoning_summary_text.done",
        item_id=rotating_id(),
        output_index=0,
        summary_index=0,
        text="**Planning**",
    ),
    ev(
        "response.reasoning_summary_text.delta",
        item_id=rotating_id(),
        output_index=0,
        summary_index=1,
        delta="Then act.",
    ),
    ev("response.output_item.done", output_index=0, item={**REASONING_ITEM, "id": rotating_id()}),
    ev(
        "response.output_item.added",
        output_index=1,
        item={**FUNCTION_ITEM_A, "id": "rotated-A", "arguments": "", "status": "in_progress"},
    ),
    ev(
        "response.output_item.added",
        output_index=2,
        item={**FUNCTION_ITEM_B, "id": "rotated-B", "arguments": "", "status": "in_progress"},
    ),
    ev("response.function_call_arguments.delta", item_id=rotating_id(), output_index=1, delta='{"comm'),
    ev("response.function_call_arguments.delta", item_id=rotating_id(), output_index=2, delta='{"path"'),
    ev("response.function_call_arguments.delta", item_id=rotating_id(), output_index=1, delta='and": "ls"}'),
    ev("response.function_call_arguments.delta", item_id=rotating_id(), output_index=2, delta=':"x"}'),
    ev("response.function_call_arguments.done", item_id=rotating_id(), output_index=1, arguments='{"command": "ls"}'),
    ev("response.output_item.done", output_index=1, item=FUNCTION_ITEM_A),
    ev("response.output_item.done", output_index=2, item=FUNCTION_ITEM_B),
    {
        **ev(
            "response.completed",
            response=response("completed", output=[REASONING_ITEM, FUNCTION_ITEM_A, FUNCTION_ITEM_B], usage=USAGE),
        ),
        "copilot_usage": COPILOT_USAGE,
    },
)


# --- streams ------------------------------------------------------------------------------------


def test_copilot_stream_with_rotating_item_ids() -> None:
    summary = run(COPILOT_STREAM)
    assert summary.response_id == "resp_1"
    assert summary.model == "gpt-5.3-codex"
    assert summary.complete is True and summary.error is None
    assert summary.tool_calls == [
        ToolCall("resp_1", "call_A", "shell", '{"command":"ls"}', item_id="fc_A"),
        ToolCall("resp_1", "call_B", "read", '{"path":"x"}', item_id="fc_B"),
    ]
    assert summary.thoughts == [
        Thought("**Planning**", "reasoning_summary", "resp_1"),
        Thought("Then act.", "reasoning_summary", "resp_1"),
    ]


def test_usage_subtracts_cache_and_keeps_copilot_usage() -> None:
    assert run(COPILOT_STREAM).usage == TokenUsage(
        provider_response_id="resp_1",
        input_tokens=300,
        output_tokens=105,
        cache_read_input_tokens=600,
        cache_write_input_tokens=100,
        metadata={"output_reasoning": 44, "total_tokens": 1105, "copilot_usage": COPILOT_USAGE},
    )


def test_truncated_stream_assembles_by_output_index() -> None:
    cut = COPILOT_STREAM.index(b'"output_index":1,"delta":"and')
    summary = run(COPILOT_STREAM[:cut])
    assert summary.complete is False
    assert summary.usage is None
    assert summary.tool_calls == [
        ToolCall("resp_1", "call_A", "shell", '{"comm', item_id="rotated-A"),
        ToolCall("resp_1", "call_B", "read", '{"path"', item_id="rotated-B"),
    ]
    assert [t.content for t in summary.thoughts] == ["**Planning**", "Then act."]


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(COPILOT_STREAM)), max_size=25))
def test_any_split_gives_the_same_summary(cuts: list[int]) -> None:
    assert run(COPILOT_STREAM, cuts) == run(COPILOT_STREAM)


def test_commentary_and_raw_reasoning() -> None:
    commentary = {
        "id": "msg_c",
        "type": "message",
        "role": "assistant",
        "phase": "commentary",
        "content": [{"type": "output_text", "text": "Checking first."}],
    }
    answer = {
        "id": "msg_f",
        "type": "message",
        "role": "assistant",
        "phase": "final_answer",
        "content": [{"type": "output_text", "text": "Done."}],
    }
    stream = sse(
        ev("response.created", response=response("in_progress")),
        ev("response.output_item.added", output_index=0, item={"id": "rs_1", "type": "reasoning", "summary": []}),
        ev("response.reasoning_text.delta", item_id="rs_1", output_index=0, content_index=0, delta="raw "),
        ev("response.reasoning_text.delta", item_id="rs_1", output_index=0, content_index=0, delta="thought"),
        ev("response.output_item.added", output_index=1, item={**commentary, "content": []}),
        ev("response.output_text.delta", item_id="msg_c", output_index=1, content_index=0, delta="Checking "),
        ev("response.output_text.delta", item_id="msg_c", output_index=1, content_index=0, delta="first."),
        ev("response.output_item.done", output_index=1, item=commentary),
        ev("response.output_item.added", output_index=2, item={**answer, "content": []}),
        ev("response.output_text.delta", item_id="msg_f", output_index=2, content_index=0, delta="Done."),
        ev("response.output_item.done", output_index=2, item=answer),
    )
    expected = [Thought("raw thought", "reasoning", "resp_1"), Thought("Checking first.", "commentary", "resp_1")]
    assert run(stream).thoughts == expected
    cut = stream.index(b'"delta":"first."')
    assert run(stream[:cut]).thoughts == [
        Thought("raw thought", "reasoning", "resp_1"),
        Thought("Checking ", "commentary", "resp_1"),
    ]


def test_custom_tool_call_without_done_events() -> None:
    summary = run(
        sse(
            ev("response.created", response=response("in_progress")),
            ev(
                "response.output_item.added",
                output_index=0,
                item={
                    "id": "ctc_1",
                    "type": "custom_tool_call",
                    "call_id": "call_P",
                    "name": "apply_patch",
                    "input": "",
                },
            ),
            ev(
                "response.custom_tool_call_input.delta",
                item_id=rotating_id(),
                output_index=0,
                delta="*** Begin Patch\n",
            ),
            ev("response.custom_tool_call_input.delta", item_id=rotating_id(), output_index=0, delta="+x\n"),
        )
    )
    assert summary.tool_calls == [ToolCall("resp_1", "call_P", "apply_patch", "*** Begin Patch\n+x\n", item_id="ctc_1")]


def test_completed_output_fills_items_without_done_and_never_duplicates() -> None:
    summary = run(
        sse(
            ev("response.created", response=response("in_progress")),
            ev("response.output_item.done", output_index=1, item=FUNCTION_ITEM_A),
            ev(
                "response.completed",
                response=response("completed", output=[REASONING_ITEM, FUNCTION_ITEM_A, FUNCTION_ITEM_B], usage=USAGE),
            ),
        )
    )
    assert [c.call_id for c in summary.tool_calls] == ["call_A", "call_B"]
    assert [t.content for t in summary.thoughts] == ["**Planning**", "Then act."]


def test_response_id_from_terminal_event_wins() -> None:
    summary = run(
        sse(
            ev("response.created", response={**response("in_progress"), "id": "capture-id-1"}),
            ev("response.in_progress", response={**response("in_progress"), "id": "capture-id-2"}),
            ev("response.completed", response={**response("completed", usage=USAGE), "id": "capture-id-69"}),
        )
    )
    assert summary.response_id == "capture-id-69"
    assert summary.usage is not None and summary.usage.provider_response_id == "capture-id-69"


def test_error_event_flat_and_nested() -> None:
    flat = run(
        sse(
            ev("response.created", response=response("in_progress")),
            ev("error", code="ERR_X", message="Something went wrong", param=None),
        )
    )
    assert (flat.error, flat.complete) == ("ERR_X: Something went wrong", True)
    nested = run(sse(ev("error", error={"type": "invalid_request_error", "code": None, "message": "No conv"})))
    assert (nested.error, nested.complete) == ("invalid_request_error: No conv", True)


def test_response_failed_and_incomplete() -> None:
    failed = run(
        sse(
            ev(
                "response.failed",
                response=response(
                    "failed",
                    error={"code": "rate_limit_exceeded", "message": "Slow down"},
                    usage={"input_tokens": 5, "output_tokens": 0},
                ),
            )
        )
    )
    assert failed.error == "rate_limit_exceeded: Slow down"
    assert failed.complete is True
    assert failed.usage is not None and failed.usage.input_tokens == 5
    incomplete = run(
        sse(
            ev(
                "response.incomplete",
                response=response(
                    "incomplete",
                    usage={"input_tokens": 7, "output_tokens": 9, "total_tokens": 16},
                    incomplete_details={"reason": "max_output_tokens"},
                ),
            )
        )
    )
    assert incomplete.complete is True and incomplete.error is None
    assert incomplete.usage == TokenUsage("resp_1", 7, 9, 0, 0, {"total_tokens": 16})


def test_garbled_and_unknown_events_are_skipped() -> None:
    summary = run(
        sse(
            ev("response.created", response=response("in_progress")),
            ("response.output_item.added", '{"type":"response.output_item.added","item":{"ty'),
            ev("response.output_item.added", output_index=0, item={**FUNCTION_ITEM_A, "arguments": ""}),
            ev("response.function_call_arguments.delta", output_index="0", delta="junk"),
            ev("response.function_call_arguments.delta", output_index=True, delta="junk"),
            ev("response.function_call_arguments.delta", output_index=0, delta='{"command": "ls"}'),
            ev("response.output_item.done", output_index=3, item="not an item"),
            ev("response.brand_new_thing", output_index=0, whatever=[1]),
            ("response.completed", "[1, 2, 3]"),
            ev("response.completed", response="nope"),
        )
        + b'event: response.output_text.delta\nda\nta: { "wrong format"\n\n'
    )
    assert summary.tool_calls == [ToolCall("resp_1", "call_A", "shell", '{"command":"ls"}', item_id="fc_A")]
    assert summary.complete is True


def test_output_text_is_not_parsed_outside_commentary(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real_loads = responses.loads_object
    monkeypatch.setattr(responses, "loads_object", lambda data: parsed.append(data) or real_loads(data))
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    run(
        sse(
            ev("response.created", response=response("in_progress")),
            ev("response.in_progress", response=response("in_progress")),
            ev("response.output_item.added", output_index=0, item=message),
            ev("response.content_part.added", item_id="msg_1", output_index=0, content_index=0, part={}),
            *[
                ev("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=f"w{i}")
                for i in range(30)
            ],
            ev("response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text="..."),
            ev("response.content_part.done", item_id="msg_1", output_index=0, content_index=0, part={}),
            ev("response.output_item.done", output_index=0, item=message),
            ev("response.completed", response=response("completed", usage=USAGE)),
        )
    )
    assert len(parsed) == 4  # created, output_item.added, output_item.done, completed


# --- blocking bodies ----------------------------------------------------------------------------


def test_blocking_body() -> None:
    commentary = {
        "type": "message",
        "role": "assistant",
        "phase": "commentary",
        "content": [{"type": "output_text", "text": "Let me "}, {"type": "output_text", "text": "check."}],
    }
    custom = {"id": "ctc_1", "type": "custom_tool_call", "call_id": "call_C", "name": "exec", "input": "print(1)"}
    summary = responses.parse_response(
        {
            **response("completed", output=[REASONING_ITEM, commentary, FUNCTION_ITEM_A, custom], usage=USAGE),
            "copilot_usage": COPILOT_USAGE,
        }
    )
    assert summary.complete is True
    assert summary.tool_calls == [
        ToolCall("resp_1", "call_A", "shell", '{"command":"ls"}', item_id="fc_A"),
        ToolCall("resp_1", "call_C", "exec", "print(1)", item_id="ctc_1"),
    ]
    assert [(t.source, t.content) for t in summary.thoughts] == [
        ("reasoning_summary", "**Planning**"),
        ("reasoning_summary", "Then act."),
        ("commentary", "Let me check."),
    ]
    assert summary.usage is not None and summary.usage.metadata["copilot_usage"] == COPILOT_USAGE


def test_blocking_error_and_junk() -> None:
    error = responses.parse_response({"error": {"message": "Bad key", "type": "auth", "code": "invalid_api_key"}})
    assert error.error == "invalid_api_key: Bad key"
    failed = responses.parse_response(response("failed", error={"code": "server_error", "message": "boom"}))
    assert failed.error == "server_error: boom"
    assert responses.parse_response({"output": "x", "usage": []}) == ResponseSummary(complete=True)
    assert responses.parse_response(None) == ResponseSummary(complete=True)  # type: ignore[arg-type]


# --- requests -----------------------------------------------------------------------------------


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


AGENTS_MD = "# AGENTS.md instructions for /repo\n\n<INSTRUCTIONS>\nbe terse\n</INSTRUCTIONS>"
ENV_CONTEXT = "<environment_context>\n  <cwd>/repo</cwd>\n</environment_context>"


def test_request_string_input() -> None:
    info = responses.parse_request({"model": "gpt-5", "input": "tell me a joke", "stream": True})
    assert (info.model, info.stream, info.prompt, info.correlating_tool_call_id) == (
        "gpt-5",
        True,
        "tell me a joke",
        None,
    )


def test_request_codex_history() -> None:
    body = {
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<permissions instructions>"}],
            },
            user(AGENTS_MD),
            user(ENV_CONTEXT),
            user("first question"),
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "answer"}]},
            user("fix the tests"),
        ]
    }
    assert responses.parse_request(body).prompt == "fix the tests"


def test_request_injected_context_last_walks_back_to_the_typed_message() -> None:
    body = {"input": [user("fix the tests"), user(ENV_CONTEXT), user("<user_instructions>x</user_instructions>")]}
    assert responses.parse_request(body).prompt == "fix the tests"
    only_context = {"input": [{"role": "assistant", "content": "hi"}, user(AGENTS_MD), user(ENV_CONTEXT)]}
    assert responses.parse_request(only_context).prompt is None


def test_request_message_mixing_context_and_typed_text() -> None:
    body = {
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "do it"}, {"type": "input_text", "text": ENV_CONTEXT}],
            }
        ]
    }
    assert responses.parse_request(body).prompt == "do it"
    assert responses.parse_request({"input": [{"role": "user", "content": "plain string"}]}).prompt == "plain string"


def test_request_tool_output_last() -> None:
    body = {
        "input": [
            user("run ls"),
            {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a"},
            {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch", "input": "..."},
            {"type": "custom_tool_call_output", "call_id": "call_2", "output": "ok"},
        ]
    }
    info = responses.parse_request(body)
    assert (info.prompt, info.correlating_tool_call_id) == (None, "call_2")


def test_request_tool_output_followed_by_a_prompt_does_not_correlate() -> None:
    body = {"input": [{"type": "function_call_output", "call_id": "call_1", "output": "a"}, user("thanks, now x")]}
    info = responses.parse_request(body)
    assert (info.prompt, info.correlating_tool_call_id) == ("thanks, now x", None)


def test_request_last_item_not_a_user_message() -> None:
    body = {"input": [user("q"), {"type": "reasoning", "summary": []}]}
    assert responses.parse_request(body).prompt is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": None},
        {"input": [None]},
        {"input": [{"role": "user", "content": 3}]},
        {"input": [{"type": "function_call_output"}]},
        {"input": ""},
        [],
    ],
)
def test_request_junk_never_raises(body: Any) -> None:
    info = responses.parse_request(body)
    assert info.prompt is None and info.correlating_tool_call_id is None


# --- captured fixtures --------------------------------------------------------------------------

FIXTURE_DIR = FIXTURES / "openai" / "responses" if FIXTURES else None


def _fixture_params() -> list[Any]:
    return fixture_params(FIXTURE_DIR)


def parse_fixture(path: Path) -> dict[str, Any]:
    return _parse_fixture(responses, path, stride=13)


@pytest.mark.parametrize("path", _fixture_params())
def test_every_fixture_parses(path: Path) -> None:
    for name, value in parse_fixture(path).items():
        if name != "request" and value is not None:
            assert value.complete, name
            assert value.usage is not None or value.error is not None, name


def fixture(name: str) -> dict[str, Any]:
    if FIXTURE_DIR is None:
        pytest.skip(SKIP_REASON)
    return parse_fixture(FIXTURE_DIR / f"{name}.txtar")


ADD_ARGS = '{"a":3,"b":5}'


def test_fixture_simple() -> None:
    stream = fixture("streaming/simple")
    assert stream["request"].prompt == "tell me a joke"
    assert stream["streaming"].response_id == "resp_0f9c4b2f224d858000695fa062bf048197a680f357bbb09000"
    assert stream["streaming"].usage == TokenUsage(
        "resp_0f9c4b2f224d858000695fa062bf048197a680f357bbb09000",
        11,
        18,
        0,
        0,
        {"output_reasoning": 0, "total_tokens": 29},
    )
    blocking = fixture("blocking/simple")
    assert blocking["request"].stream is False
    assert blocking["non-streaming"].response_id == "resp_0388c79043df3e3400695f9f83cd6481959062cec6830d8d51"


def test_fixture_cached_input_tokens() -> None:
    usage = fixture("streaming/cached_input_tokens")["streaming"].usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (16909 - 15744, 15744, 54)
    blocking = fixture("blocking/cached_input_tokens")["non-streaming"].usage
    assert (blocking.input_tokens, blocking.cache_read_input_tokens) == (12033 - 11904, 11904)


def test_fixture_builtin_tool() -> None:
    stream = fixture("streaming/builtin_tool")["streaming"]
    assert stream.tool_calls == [
        ToolCall(
            "resp_0c3fb28cfcf463a500695fa2f0239481a095ec6ce3dfe4d458",
            "call_7VaiUXZYuuuwWwviCrckxq6t",
            "add",
            ADD_ARGS,
            item_id="fc_0c3fb28cfcf463a500695fa2f0b0a881a0890103ba88b0628e",
        )
    ]
    assert [(t.source, t.content) for t in stream.thoughts] == [
        ("reasoning_summary", "The user wants to add 3 and 5. Let me call the add function.")
    ]
    blocking = fixture("blocking/single_builtin_tool")["non-streaming"]
    assert [(c.call_id, c.input) for c in blocking.tool_calls] == [("call_CJSaa2u51JG996575oVljuNq", ADD_ARGS)]


def test_fixture_single_builtin_tool_parallel() -> None:
    for name, section, ids in (
        (
            "streaming/single_builtin_tool_parallel",
            "streaming",
            ["call_ParallelStreamFirst001", "call_ParallelStreamSecond01"],
        ),
        (
            "blocking/single_builtin_tool_parallel",
            "non-streaming",
            ["call_ParallelBlockingFirst001", "call_ParallelBlockingSecond01"],
        ),
    ):
        summary = fixture(name)[section]
        assert [(c.call_id, c.input) for c in summary.tool_calls] == [(ids[0], ADD_ARGS), (ids[1], '{"a":10,"b":20}')]
        assert len(summary.thoughts) == 1


def test_fixture_multi_reasoning_builtin_tool() -> None:
    for name, section in (
        ("streaming/multi_reasoning_builtin_tool", "streaming"),
        ("blocking/multi_reasoning_builtin_tool", "non-streaming"),
    ):
        summary = fixture(name)[section]
        assert [t.content for t in summary.thoughts] == [
            "The user wants to add 3 and 5. Let me call the add function.",
            "After adding, I will check if the result is prime.",
        ]
        assert {t.source for t in summary.thoughts} == {"reasoning_summary"}


def test_fixture_commentary_builtin_tool() -> None:
    for name, section in (
        ("streaming/commentary_builtin_tool", "streaming"),
        ("blocking/commentary_builtin_tool", "non-streaming"),
    ):
        summary = fixture(name)[section]
        assert [(t.source, t.content) for t in summary.thoughts] == [
            ("commentary", "Checking whether 3 + 5 is prime by calling the add function first.")
        ]
        assert [(c.call_id, c.name, c.input) for c in summary.tool_calls] == [
            ("call_A8TkZmIcKtw2Zw952Wc5QVe7", "add", ADD_ARGS)
        ]
        assert summary.usage.metadata["output_reasoning"] == 10


def test_fixture_summary_and_commentary_builtin_tool() -> None:
    for name, section in (
        ("streaming/summary_and_commentary_builtin_tool", "streaming"),
        ("blocking/summary_and_commentary_builtin_tool", "non-streaming"),
    ):
        summary = fixture(name)[section]
        assert [(t.source, t.content) for t in summary.thoughts] == [
            ("reasoning_summary", "I need to add 3 and 5 to check primality."),
            ("commentary", "Let me calculate the sum first using the add function."),
        ]
        assert [c.call_id for c in summary.tool_calls] == ["call_B9UjYX01Lvvv1XwjDsdmRW3f"]


def test_fixture_custom_tool() -> None:
    stream = fixture("streaming/custom_tool")
    assert stream["request"].prompt == "Use the code_exec tool to print hello world to the console."
    assert stream["streaming"].tool_calls == [
        ToolCall(
            "resp_0c26996bc41c2a0500696942e83634819fb71b2b8ff8a4a76c",
            "call_2gSnF58IEhXLwlbnqbm5XKMd",
            "code_exec",
            'print("hello world")',
            item_id="ctc_0c26996bc41c2a0500696942ee6db8819fa6e841317eecbfb2",
        )
    ]
    assert stream["streaming"].usage.metadata["output_reasoning"] == 320
    blocking = fixture("blocking/custom_tool")["non-streaming"]
    assert [(c.call_id, c.input) for c in blocking.tool_calls] == [
        ("call_haf8njtwrVZ1754Gm6fjAtuA", 'print("hello world")')
    ]


def test_fixture_codex_example() -> None:
    f = fixture("streaming/codex_example")
    request = f["request"]
    assert (request.model, request.stream, request.prompt) == ("gpt-5-codex", True, "hello")
    stream = f["streaming"]
    assert stream.response_id == "resp_0e172b76542a9100016964f7e63d888191a2a28cb2ba0ab6d3"
    assert stream.usage is not None and (stream.usage.input_tokens, stream.usage.output_tokens) == (4006, 13)
    assert stream.thoughts == [Thought("**Preparing simple response**", "reasoning_summary", stream.response_id)]
    assert stream.tool_calls == []


def test_fixture_stream_error_and_failure() -> None:
    error = fixture("streaming/stream_error")["streaming"]
    assert (error.error, error.complete, error.response_id) == ("ERR_SOMETHING: Something went wrong", True, "resp_123")
    failure = fixture("streaming/stream_failure")["streaming"]
    assert failure.error == "server_error: The model failed to generate a response."
    conversation = fixture("streaming/conversation")["streaming"]
    assert conversation.error is not None and conversation.error.startswith("invalid_request_error: Conversation")


def test_fixture_http_errors() -> None:
    assert fixture("streaming/http_error")["streaming"].error == (
        "rate_limit_exceeded: Rate limit exceeded. Please try again in 20 seconds."
    )
    assert fixture("blocking/http_error")["non-streaming"].error.startswith("invalid_api_key: Incorrect API key")


def test_fixture_wrong_response_format_stream_still_completes() -> None:
    stream = fixture("streaming/wrong_response_format")["streaming"]
    assert stream.complete and stream.usage is not None and stream.usage.output_tokens == 18
