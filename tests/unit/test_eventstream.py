"""AWS event-stream decoding, Bedrock -> Anthropic SSE conversion, Converse/Invoke stream parsers."""

from __future__ import annotations

import base64
import binascii
import struct
from pathlib import Path

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.wire.anthropic import StreamParser
from addons.wire.converse import ConverseStreamParser, InvokeStreamParser, parse_request, parse_response
from addons.wire.eventstream import (
    BedrockToAnthropicSSE,
    EventStreamDecoder,
    EventStreamError,
    StreamFrame,
    anthropic_sse,
    converse_event,
    exception_to_anthropic_error,
    invoke_chunk_event,
)
from addons.wire.model import ResponseSummary
from addons.wire.sse import SSEDecoder
from tests import txtar
from tests.eventstream_encoder import (
    chunk_frame,
    converse_frame,
    corrupt_crc,
    corrupt_payload,
    encode_frame,
    error_frame,
    exception_frame,
)

METRICS = {"inputTokenCount": 10, "outputTokenCount": 10, "invocationLatency": 321, "firstByteLatency": 123}

# A synthetic Anthropic stream: thinking, text, a tool call, usage with cache counts.
EVENTS: list[dict] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_bdrk_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 3,
                "cache_read_input_tokens": 40,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "think."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "ping"},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Reading é ✓"}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {}},
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"pa'}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'th":"a"}'}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 30},
    },
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": METRICS},
]


def bedrock_body(events: list[dict]) -> bytes:
    return b"".join(chunk_frame(e) for e in events)


def expected_sse(events: list[dict]) -> bytes:
    def strip(e: dict) -> dict:
        return {k: v for k, v in e.items() if k != "amazon-bedrock-invocationMetrics"}

    return b"".join(anthropic_sse(strip(e)) for e in events)


def parse_sse(data: bytes) -> ResponseSummary:
    parser = StreamParser()
    decoder = SSEDecoder()
    for event in [*decoder.feed(data), *decoder.close()]:
        parser.on_event(event)
    return parser.summary()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- the decoder -------------------------------------------------------------------------------

frame_strategy = st.one_of(
    st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3).map(
        lambda d: chunk_frame({"type": "content_block_delta", **d})
    ),
    st.tuples(st.sampled_from(["messageStart", "contentBlockDelta", "metadata"]), st.text(max_size=40)).map(
        lambda t: converse_frame(t[0], {"x": t[1]})
    ),
    st.text(max_size=30).map(lambda m: exception_frame("throttlingException", m)),
    st.binary(max_size=64).map(lambda b: encode_frame({":message-type": "event", ":event-type": "raw"}, b)),
)


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(frame_strategy, min_size=1, max_size=8), data=st.data())
def test_decoder_any_split_points(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    decoder = EventStreamDecoder()
    got = [f for piece in split_at(stream, cuts) for f in decoder.feed(piece)]
    assert decoder.buffered == 0
    reference = EventStreamBuffer()
    reference.add_data(stream)
    expected = list(reference)
    assert [f.payload for f in got] == [m.payload for m in expected]
    assert [f.event_type for f in got] == [m.headers.get(":event-type") for m in expected]
    assert [f.exception_type for f in got] == [m.headers.get(":exception-type") for m in expected]


def test_decoder_byte_by_byte_and_buffered() -> None:
    frame = chunk_frame({"type": "ping"})
    decoder = EventStreamDecoder()
    for i in range(len(frame) - 1):
        assert decoder.feed(frame[i : i + 1]) == []
    assert decoder.buffered == len(frame) - 1
    (got,) = decoder.feed(frame[-1:])
    assert (got.message_type, got.event_type, got.exception_type) == ("event", "chunk", None)
    assert decoder.buffered == 0


def test_message_crc_mismatch_keeps_earlier_frames_and_poisons() -> None:
    good = chunk_frame({"type": "ping"})
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError, match="ChecksumMismatch") as info:
        decoder.feed(good + corrupt_payload(chunk_frame({"type": "message_stop"})) + good)
    assert len(info.value.frames) == 1 and invoke_chunk_event(info.value.frames[0]) == {"type": "ping"}
    with pytest.raises(EventStreamError, match="already failed"):
        decoder.feed(good)


def test_corrupted_crc_field() -> None:
    with pytest.raises(EventStreamError, match="Checksum"):
        EventStreamDecoder().feed(corrupt_crc(chunk_frame({"type": "ping"})))


def test_prelude_crc_mismatch() -> None:
    frame = bytearray(chunk_frame({"type": "ping"}))
    frame[3] ^= 0x10  # total length changed, prelude CRC no longer matches
    with pytest.raises(EventStreamError, match="prelude CRC mismatch"):
        EventStreamDecoder().feed(bytes(frame))


def _prelude(total: int, headers_len: int) -> bytes:
    head = struct.pack(">II", total, headers_len)
    return head + struct.pack(">I", binascii.crc32(head) & 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("prelude", "message"),
    [
        (_prelude(8, 0), "total length 8"),
        (_prelude(20, 10), "total length 20 < headers 10"),
        (_prelude(200_000 + 16, 200_000), "headers length 200000"),
        (_prelude(30 * 1024 * 1024, 0), "24 MiB"),
    ],
)
def test_malformed_prelude_with_valid_crc(prelude: bytes, message: str) -> None:
    with pytest.raises(EventStreamError, match=message):
        EventStreamDecoder().feed(prelude)


def test_unknown_header_type_is_reported() -> None:
    headers = b"\x03abc\x63"  # name "abc", type 99
    total = 12 + len(headers) + 4
    body = _prelude(total, len(headers)) + headers
    frame = body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)
    with pytest.raises(EventStreamError, match="malformed headers"):
        EventStreamDecoder().feed(frame)


# --- frames --------------------------------------------------------------------------------------


def _one(frame: bytes) -> StreamFrame:
    (got,) = EventStreamDecoder().feed(frame)
    return got


def test_invoke_chunk_event() -> None:
    frame = _one(chunk_frame({"type": "message_stop", "x": "é"}))
    assert invoke_chunk_event(frame) == {"type": "message_stop", "x": "é"}
    assert invoke_chunk_event(_one(converse_frame("messageStart", {"role": "assistant"}))) is None
    assert invoke_chunk_event(_one(exception_frame("throttlingException", "slow"))) is None


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"p":"x"}', b'{"bytes":"***"}', orjson.dumps({"bytes": base64.b64encode(b"[1]").decode()})],
)
def test_invoke_chunk_event_bad_payload(payload: bytes) -> None:
    frame = _one(encode_frame({":message-type": "event", ":event-type": "chunk"}, payload))
    with pytest.raises(EventStreamError, match="chunk payload"):
        invoke_chunk_event(frame)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("throttlingException", "rate_limit_error"),
        ("validationException", "invalid_request_error"),
        ("modelStreamErrorException", "api_error"),
        ("internalServerException", "api_error"),
        ("serviceUnavailableException", "overloaded_error"),
        ("modelTimeoutException", "timeout_error"),
        ("somethingNewException", "api_error"),
    ],
)
def test_exception_mapping(kind: str, expected: str) -> None:
    frame = _one(exception_frame(kind, "went wrong"))
    assert frame.message_type == "exception" and frame.exception_type == kind
    assert exception_to_anthropic_error(frame) == {
        "type": "error",
        "error": {"type": expected, "message": "went wrong"},
    }


def test_exception_original_status_and_error_frames() -> None:
    frame = _one(
        exception_frame(
            "modelStreamErrorException", "Model failed", originalStatusCode=529, originalMessage="Overloaded"
        )
    )
    assert exception_to_anthropic_error(frame)["error"] == {
        "type": "api_error",
        "message": "Model failed (original status 529: Overloaded)",
    }
    err = _one(error_frame("InternalFailure", "boom"))
    assert (err.message_type, err.exception_type, err.error_message) == ("error", "InternalFailure", "boom")
    assert exception_to_anthropic_error(err)["error"] == {"type": "api_error", "message": "boom"}


def test_anthropic_sse_and_converse_event() -> None:
    assert anthropic_sse({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    frame = _one(converse_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}))
    assert converse_event(frame) == ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
    assert converse_event(_one(exception_frame("throttlingException", "x"))) is None


# --- BedrockToAnthropicSSE ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, len(bedrock_body(EVENTS))), max_size=20))
def test_converter_output_is_the_anthropic_stream(cuts: list[int]) -> None:
    conv = BedrockToAnthropicSSE()
    out = b"".join(conv.feed(piece) for piece in split_at(bedrock_body(EVENTS), cuts)) + conv.close()
    assert out == expected_sse(EVENTS)
    assert conv.events == EVENTS
    assert conv.invocation_metrics == METRICS


def test_converter_summary_matches_anthropic_parser() -> None:
    conv = BedrockToAnthropicSSE()
    summary = parse_sse(conv.feed(bedrock_body(EVENTS)))
    assert summary == parse_sse(expected_sse(EVENTS))
    assert summary.complete and summary.error is None
    assert summary.usage is not None
    assert (summary.usage.input_tokens, summary.usage.output_tokens) == (12, 30)
    assert (summary.usage.cache_read_input_tokens, summary.usage.cache_write_input_tokens) == (40, 3)
    assert [(t.call_id, t.name, t.input) for t in summary.tool_calls] == [("toolu_1", "read_file", '{"path":"a"}')]
    assert [t.content for t in summary.thoughts] == ["Let me think."]


def test_converter_callback_mode() -> None:
    seen: list[dict] = []
    conv = BedrockToAnthropicSSE(on_event=seen.append)
    conv.feed(bedrock_body(EVENTS[:3]))
    assert seen == EVENTS[:3] and conv.events == []


def test_converter_corrupted_frame_emits_error_and_stops() -> None:
    conv = BedrockToAnthropicSSE()
    out = conv.feed(bedrock_body(EVENTS[:2]) + corrupt_crc(chunk_frame(EVENTS[2])))
    assert out.startswith(expected_sse(EVENTS[:2]))
    error = orjson.loads(out[len(expected_sse(EVENTS[:2])) :].split(b"data: ", 1)[1])
    assert error["error"]["type"] == "api_error"
    assert error["error"]["message"].startswith("corrupted event stream frame")
    assert conv.finished
    assert conv.feed(bedrock_body(EVENTS[3:])) == b"" and conv.close() == b""
    summary = parse_sse(out)
    assert summary.error is not None and "corrupted event stream frame" in summary.error


def test_converter_garbled_chunk_payload() -> None:
    bad = encode_frame({":message-type": "event", ":event-type": "chunk"}, b'{"bytes":"%%%"}')
    out = BedrockToAnthropicSSE().feed(bad)
    assert b'"type":"api_error"' in out and b"corrupted event stream frame" in out


def test_converter_exception_frame() -> None:
    conv = BedrockToAnthropicSSE()
    out = conv.feed(bedrock_body(EVENTS[:1]) + exception_frame("throttlingException", "Too many tokens"))
    assert out == expected_sse(EVENTS[:1]) + anthropic_sse(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many tokens"}}
    )
    assert conv.feed(bedrock_body(EVENTS[1:])) == b""


def test_converter_stream_cut_mid_frame() -> None:
    conv = BedrockToAnthropicSSE()
    frame = chunk_frame(EVENTS[1])
    assert conv.feed(bedrock_body(EVENTS[:1]) + frame[:25]) == expected_sse(EVENTS[:1])
    tail = conv.close()
    assert b"event: error" in tail and b"ended mid-frame (25 bytes left over)" in tail
    assert conv.close() == b""


def test_converter_clean_close_is_empty() -> None:
    conv = BedrockToAnthropicSSE()
    conv.feed(bedrock_body(EVENTS))
    assert conv.close() == b""


# --- captured fixtures -----------------------------------------------------------------------------

needs_fixtures = pytest.mark.skipif(txtar.FIXTURES is None, reason=txtar.SKIP_REASON)


def fixture_events(path: Path) -> list[dict]:
    _, sections = txtar.load(path)
    decoder = SSEDecoder()
    raw = sections["streaming"].encode()
    blocks = [*decoder.feed(raw), *decoder.close()]
    return [orjson.loads(b.data) for b in blocks if b.data]


@needs_fixtures
def test_simple_bedrock_fixture_bytes_are_reproduced() -> None:
    assert txtar.FIXTURES is not None
    path = txtar.FIXTURES / "anthropic" / "simple_bedrock.txtar"
    events = fixture_events(path)
    events[-1] = {**events[-1], "amazon-bedrock-invocationMetrics": METRICS}  # as Bedrock adds it
    conv = BedrockToAnthropicSSE()
    body = bedrock_body(events)
    out = b"".join(conv.feed(body[i : i + 13]) for i in range(0, len(body), 13)) + conv.close()
    assert out.decode() == txtar.load(path)[1]["streaming"].rstrip("\n") + "\n\n"
    assert conv.invocation_metrics == METRICS


@needs_fixtures
@pytest.mark.parametrize(
    "name",
    [
        "simple",
        "haiku_simple",
        "single_builtin_tool",
        "single_builtin_tool_parallel",
        "multi_thinking_builtin_tool",
        "stream_error",
    ],
)
def test_fixture_streams_summarise_identically(name: str) -> None:
    assert txtar.FIXTURES is not None
    path = txtar.FIXTURES / "anthropic" / f"{name}.txtar"
    events = fixture_events(path)
    conv = BedrockToAnthropicSSE()
    out = conv.feed(bedrock_body(events)) + conv.close()
    assert out == expected_sse(events)
    raw = txtar.load(path)[1]["streaming"].encode()
    assert parse_sse(out) == parse_sse(raw)
    parser = InvokeStreamParser()
    parser.feed(bedrock_body(events))
    assert parser.summary() == parse_sse(raw)


# --- InvokeStreamParser ------------------------------------------------------------------------------


def test_invoke_stream_parser_matches_anthropic_parser() -> None:
    parser = InvokeStreamParser()
    body = bedrock_body(EVENTS)
    for i in range(0, len(body), 7):
        parser.feed(body[i : i + 7])
    parser.close()
    summary = parser.summary()
    reference = parse_sse(expected_sse(EVENTS))
    assert summary.usage is not None and reference.usage is not None
    assert summary.usage.metadata.pop("bedrock_invocation_metrics") == METRICS
    assert summary == reference
    assert parser.invocation_metrics == METRICS


def test_invoke_stream_parser_errors() -> None:
    parser = InvokeStreamParser()
    for frame in EventStreamDecoder().feed(
        bedrock_body(EVENTS[:2]) + exception_frame("modelStreamErrorException", "bad", originalStatusCode=500)
    ):
        parser.on_frame(frame)
    summary = parser.summary()
    assert summary.error == "api_error: bad (original status 500)" and summary.complete

    cut = InvokeStreamParser()
    cut.feed(bedrock_body(EVENTS[:2]) + chunk_frame(EVENTS[2])[:9])
    cut.close()
    assert cut.summary().error is not None and "mid-frame" in cut.summary().error

    corrupt = InvokeStreamParser()
    corrupt.feed(corrupt_crc(chunk_frame(EVENTS[0])))
    assert "corrupted event stream frame" in (corrupt.summary().error or "")


# --- Converse ------------------------------------------------------------------------------------------

CONVERSE_FRAMES = [
    converse_frame("messageStart", {"role": "assistant"}),
    converse_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hmm, "}}}),
    converse_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "ok."}}}),
    converse_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "s"}}}),
    converse_frame("contentBlockStop", {"contentBlockIndex": 0}),
    converse_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Let me look."}}),
    converse_frame("contentBlockStop", {"contentBlockIndex": 1}),
    converse_frame(
        "contentBlockStart",
        {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "read_file"}}},
    ),
    converse_frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"path": '}}}),
    converse_frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '"a.txt"}'}}}),
    converse_frame("contentBlockStop", {"contentBlockIndex": 2}),
    converse_frame(
        "contentBlockStart",
        {"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "list"}}},
    ),
    converse_frame("contentBlockStop", {"contentBlockIndex": 3}),
    converse_frame("messageStop", {"stopReason": "tool_use"}),
    converse_frame(
        "metadata",
        {
            "usage": {
                "inputTokens": 20,
                "outputTokens": 15,
                "totalTokens": 535,
                "cacheReadInputTokens": 400,
                "cacheWriteInputTokens": 100,
            },
            "metrics": {"latencyMs": 900},
        },
    ),
]


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, len(b"".join(CONVERSE_FRAMES))), max_size=15))
def test_converse_stream_parser(cuts: list[int]) -> None:
    parser = ConverseStreamParser(model="us.anthropic.claude-sonnet-4-5-v1:0", response_id="req-1")
    for piece in split_at(b"".join(CONVERSE_FRAMES), cuts):
        parser.feed(piece)
    parser.close()
    s = parser.summary()
    assert s.complete and s.error is None and parser.stop_reason == "tool_use"
    assert (s.response_id, s.model) == ("req-1", "us.anthropic.claude-sonnet-4-5-v1:0")
    assert s.usage is not None
    # inputTokens is the non-cached part: copied as-is, cache counts alongside.
    assert (s.usage.input_tokens, s.usage.output_tokens) == (20, 15)
    assert (s.usage.cache_read_input_tokens, s.usage.cache_write_input_tokens) == (400, 100)
    assert s.usage.metadata == {"total_tokens": 535, "latency_ms": 900}
    assert [(t.call_id, t.name, t.input, t.provider_response_id) for t in s.tool_calls] == [
        ("tooluse_1", "read_file", '{"path":"a.txt"}', "req-1"),
        ("tooluse_2", "list", "{}", "req-1"),
    ]
    assert [(t.content, t.source) for t in s.thoughts] == [("Hmm, ok.", "thinking")]


def test_converse_stream_parser_exception_and_cut() -> None:
    parser = ConverseStreamParser()
    parser.feed(b"".join(CONVERSE_FRAMES[:3]) + exception_frame("throttlingException", "Too many requests"))
    s = parser.summary()
    assert s.error == "throttlingException: Too many requests" and s.complete

    cut = ConverseStreamParser()
    cut.feed(b"".join(CONVERSE_FRAMES[:3]) + CONVERSE_FRAMES[3][:10])
    cut.close()
    assert not cut.summary().complete and "mid-frame" in (cut.summary().error or "")


def test_converse_parse_request() -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"text": "first"}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "ls", "input": {}}}]},
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "t1", "content": [{"text": "a.txt"}], "status": "success"}},
                    {"text": "context"},
                    {"cachePoint": {"type": "default"}},
                    {"text": "now summarise"},
                ],
            },
        ],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 100},
    }
    info = parse_request(orjson.dumps(body), model="anthropic.claude-x", stream=True)
    assert (info.model, info.stream, info.prompt, info.correlating_tool_call_id) == (
        "anthropic.claude-x",
        True,
        "now summarise",
        "t1",
    )
    only_tool = {"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t9", "content": []}}]}]}
    info = parse_request(orjson.dumps(only_tool))
    assert (info.prompt, info.correlating_tool_call_id) == (None, "t9")
    assert parse_request(b"not json").prompt is None


def test_converse_parse_response() -> None:
    body = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "s"}}},
                    {"text": "Calling."},
                    {"toolUse": {"toolUseId": "tu1", "name": "read", "input": {"path": "x"}}},
                ],
            }
        },
        "stopReason": "tool_use",
        "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12, "cacheReadInputTokens": 0},
        "metrics": {"latencyMs": 42},
    }
    s = parse_response(orjson.dumps(body), model="m", response_id="rid")
    assert s.complete and (s.model, s.response_id) == ("m", "rid")
    assert s.usage is not None and (s.usage.input_tokens, s.usage.output_tokens) == (5, 7)
    assert s.usage.metadata == {"total_tokens": 12, "latency_ms": 42}
    assert [(t.call_id, t.name, t.input) for t in s.tool_calls] == [("tu1", "read", '{"path":"x"}')]
    assert [(t.content, t.source) for t in s.thoughts] == [("Think.", "thinking")]
