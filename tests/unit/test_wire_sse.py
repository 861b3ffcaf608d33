"""SSE decoder: framing rules, exact raw bytes, and chunking independence."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from addons.wire.sse import SSEDecoder, SSEEvent


def decode(data: bytes, cuts: list[int] | None = None) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts or [])):
        events += decoder.feed(data[start:cut])
        start = cut
    events += decoder.feed(data[start:])
    events += decoder.close()
    return events


def fields(events: list[SSEEvent]) -> list[tuple[str | None, str | None]]:
    return [(e.event, e.data) for e in events]


# --- framing rules ------------------------------------------------------------------------------


def test_named_events_with_lf() -> None:
    data = b'event: message_start\ndata: {"a":1}\n\nevent: ping\ndata: {}\n\n'
    events = decode(data)
    assert fields(events) == [("message_start", '{"a":1}'), ("ping", "{}")]
    assert events[0].raw == b'event: message_start\ndata: {"a":1}\n\n'


def test_crlf_and_cr_line_endings_mixed() -> None:
    data = b"data: a\r\n\r\ndata: b\r\rdata: c\n\r\n"
    assert fields(decode(data)) == [(None, "a"), (None, "b"), (None, "c")]


def test_multi_line_data_is_joined_with_newline() -> None:
    assert fields(decode(b"data: one\ndata: two\ndata:\n\n")) == [(None, "one\ntwo\n")]


def test_only_one_space_after_colon_is_removed() -> None:
    assert fields(decode(b"data:x\n\ndata:  y\n\n")) == [(None, "x"), (None, " y")]


def test_trailing_spaces_are_kept() -> None:
    assert fields(decode(b'data: {"type":"message_stop"}      \n\n')) == [(None, '{"type":"message_stop"}      ')]


def test_field_name_without_colon() -> None:
    assert fields(decode(b"data\n\nevent\ndata: x\n\n")) == [(None, ""), ("", "x")]


def test_comments_id_retry_and_unknown_fields_are_ignored() -> None:
    data = b": keep-alive\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n"
    assert fields(decode(data)) == [(None, "x")]


def test_comment_only_block_has_no_data() -> None:
    events = decode(b": ping\n\ndata: x\n\n")
    assert fields(events) == [(None, None), (None, "x")]
    assert events[0].raw == b": ping\n\n"


def test_event_without_data_has_data_none() -> None:
    assert fields(decode(b"event: ping\n\n")) == [("ping", None)]


def test_extra_blank_lines_are_empty_blocks() -> None:
    events = decode(b"\n\ndata: x\n\n")
    assert fields(events) == [(None, None), (None, None), (None, "x")]


def test_bom_at_stream_start_is_skipped_but_kept_in_raw() -> None:
    data = b"\xef\xbb\xbfevent: a\ndata: x\n\n"
    events = decode(data, cuts=[1, 2])
    assert fields(events) == [("a", "x")]
    assert events[0].raw == data


def test_bom_later_in_stream_is_not_special() -> None:
    assert fields(decode(b"data: x\n\n\xef\xbb\xbfdata: y\n\n")) == [(None, "x"), (None, None)]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert fields(decode(b"data: \xff\xfe\n\n")) == [(None, "\ufffd\ufffd")]


def test_utf8_split_across_chunks() -> None:
    data = "data: héllo ✓\n\n".encode()
    assert fields(decode(data, cuts=list(range(len(data))))) == [(None, "héllo ✓")]


def test_feed_returns_events_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.buffered == len(b"data: a\n")
    assert fields(decoder.feed(b"\ndata: b")) == [(None, "a")]
    assert decoder.buffered == len(b"data: b")
    assert decoder.feed(b"") == []


def test_cr_at_chunk_end_waits_for_possible_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == []
    events = decoder.feed(b"\ndata: b\n\n")
    assert [e.raw for e in events] == [b"data: a\r\n\r\n", b"data: b\n\n"]


def test_close_returns_unterminated_final_block() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\ndata: c") != []
    tail = decoder.close()
    assert tail == [SSEEvent(None, "b\nc", b"data: b\ndata: c")]
    assert decoder.buffered == 0
    assert decoder.close() == []


def test_close_flushes_a_block_ended_by_a_final_cr() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.close() == [SSEEvent(None, "a", b"data: a\r\r")]


def test_close_on_empty_decoder() -> None:
    assert SSEDecoder().close() == []


def test_long_line_in_tiny_chunks_is_linear() -> None:
    # A quadratic rescan of the buffer would take minutes here.
    payload = b"data: " + b"x" * 2_000_000 + b"\n\n"
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(payload), 16):
        events += decoder.feed(payload[start : start + 16])
    assert len(events) == 1 and events[0].raw == payload


def test_many_events_in_one_chunk() -> None:
    data = b"".join(b"event: e%d\ndata: %d\n\n" % (i, i) for i in range(5000))
    events = decode(data)
    assert len(events) == 5000
    assert events[4999] == SSEEvent("e4999", "4999", b"event: e4999\ndata: 4999\n\n")


# --- property tests -----------------------------------------------------------------------------

_value = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
_ending = st.sampled_from(["\n", "\r\n", "\r"])


@dataclass
class _Line:
    text: str
    name: str | None  # "event" / "data" for fields that matter
    value: str


@st.composite
def _lines(draw: st.DrawFn) -> _Line:
    kind = draw(st.sampled_from(["event", "data", "data", "comment", "id", "retry", "bare_data", "other"]))
    value = draw(_value)
    if kind == "comment":
        return _Line(":" + value, None, "")
    if kind == "bare_data":
        return _Line("data", "data", "")
    separator = draw(st.sampled_from([":", ": "]))
    expected = value if separator == ": " or not value.startswith(" ") else value[1:]
    name = kind if kind in ("event", "data") else None
    field = kind if kind != "other" else "x-unknown"
    return _Line(field + separator + value, name, expected)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[str | None, str | None]]]:
    """A random SSE byte stream and the (event, data) pairs it must decode to."""
    text = "\ufeff" if draw(st.booleans()) else ""
    expected: list[tuple[str | None, str | None]] = []
    previous_ending = ""
    blocks = draw(st.lists(st.lists(_lines(), max_size=4), max_size=6))
    unterminated_tail = draw(st.lists(_lines(), max_size=3))
    for index, block in enumerate([*blocks, unterminated_tail]):
        is_tail = index == len(blocks)
        event: str | None = None
        data: list[str] = []
        for line in block:
            ending = draw(_ending)
            text += line.text + ending
            previous_ending = ending
            if line.name == "event":
                event = line.value
            elif line.name == "data":
                data.append(line.value)
        if is_tail:
            if block and draw(st.booleans()):
                text = text[: -len(previous_ending)]  # last line without its line end
            if block or text == "\ufeff":  # leftover bytes always come back as a block
                expected.append((event, "\n".join(data) if data else None))
            break
        # A lone "\n" after "\r" would merge into one "\r\n" line end.
        blank = draw(st.sampled_from(["\r", "\r\n"] if previous_ending == "\r" else ["\n", "\r\n", "\r"]))
        text += blank
        previous_ending = blank
        expected.append((event, "\n".join(data) if data else None))
    return text.encode(), expected


@settings(max_examples=300, deadline=None)
@given(stream=_streams(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_chunking_decodes_identically(
    stream: tuple[bytes, list[tuple[str | None, str | None]]], cuts: list[int]
) -> None:
    data, expected = stream
    whole = decode(data)
    assert fields(whole) == expected
    assert b"".join(e.raw for e in whole) == data
    split = decode(data, [cut for cut in cuts if cut <= len(data)])
    assert split == whole


@settings(max_examples=100, deadline=None)
@given(stream=_streams())
def test_byte_at_a_time_decodes_identically(stream: tuple[bytes, list[tuple[str | None, str | None]]]) -> None:
    data, _ = stream
    assert decode(data, list(range(len(data)))) == decode(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_arbitrary_bytes_never_raise_and_round_trip(data: bytes, cuts: list[int]) -> None:
    whole = decode(data)
    assert b"".join(e.raw for e in whole) == data
    assert decode(data, [cut for cut in cuts if cut <= len(data)]) == whole
