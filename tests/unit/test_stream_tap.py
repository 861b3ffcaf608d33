"""The stream tap's fast path: a chunk that is one plain SSE block the parser would ignore skips the
decoder. It must change nothing: same bytes to the client, same summary, for every captured stream
and the fake upstream's streams, chunked one block per chunk (where the fast path fires) and cut
at arbitrary offsets (where it mostly cannot)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from addons.upstreams.direct import StreamTap
from addons.wire import anthropic, chat, responses
from addons.wire.model import ResponseSummary
from addons.wire.sse import lone_block
from tests.fakes import upstream as fake
from tests.sse_replay import fixture_params
from tests.txtar import FIXTURES, load

WIRE = {"anthropic": anthropic, "chatcompletions": chat, "responses": responses}


def test_lone_block_accepts_only_one_plain_block() -> None:
    assert lone_block(b'data: {"a":1}\n\n') == (None, b'{"a":1}')
    assert lone_block(b"event: ping\ndata: {}\n\n") == ("ping", b"{}")
    assert lone_block(b"data: [DONE]\n\n") == (None, b"[DONE]")
    for chunk in (b"data: a\ndata: b\n\n", b"data: a\r\n\r\n", b": keep-alive\n\n", b"data: a\n",
                  b"data:a\n\n", b"event: x\n\n", b"data: a\n\ndata: b\n\n", b"id: 1\ndata: a\n\n", b""):
        assert lone_block(chunk) is None, chunk


class Counting:
    """A parser that counts the events it is handed; `fast=False` disables the fast path."""

    def __init__(self, wire: ModuleType, fast: bool) -> None:
        self.inner = wire.StreamParser()
        self.fast = fast
        self.events = 0

    def skips(self, name: str | None, data: bytes) -> bool:
        return self.fast and self.inner.skips(name, data)

    def on_event(self, event: Any) -> None:
        self.events += 1
        self.inner.on_event(event)

    def summary(self) -> ResponseSummary:
        return self.inner.summary()


def tap_stream(wire: ModuleType, chunks: list[bytes], fast: bool, hide_usage: bool) -> tuple[bytes, Any, int]:
    parser = Counting(wire, fast)
    tap = StreamTap(parser, hide_usage)
    out = b""
    for c in [*chunks, b""]:  # b"": end of stream (the decoder's close)
        result = tap(c)
        out += result if isinstance(result, bytes) else b"".join(result)
    assert not tap.failed
    return out, parser.summary(), parser.events


def blocks(data: bytes) -> list[bytes]:
    return [b + b"\n\n" for b in data.split(b"\n\n") if b] if data.endswith(b"\n\n") else [data]


def check_same(wire: ModuleType, data: bytes, hide_usage: bool = False) -> int:
    """Asserts fast == slow for whole-block and cut chunking; returns how many events the fast path saved."""
    chunkings = [blocks(data), [data[i:i + 37] for i in range(0, len(data), 37)]]
    saved = 0
    for chunks in chunkings:
        fast_out, fast_summary, fast_events = tap_stream(wire, chunks, True, hide_usage)
        slow_out, slow_summary, slow_events = tap_stream(wire, chunks, False, hide_usage)
        assert fast_out == slow_out
        assert fast_summary == slow_summary
        saved += slow_events - fast_events
    return saved


def fake_streams() -> list[Any]:
    tool = {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}
    text = {"model": "m", "messages": [{"role": "user", "content": "hello there, a longer answer please"}]}
    with_tool = {**text, "tools": [tool]}
    return [
        pytest.param(anthropic, b"".join(fake.anthropic_events(text)), id="anthropic-text"),
        pytest.param(anthropic, b"".join(fake.anthropic_events(with_tool)), id="anthropic-tool"),
        pytest.param(chat, b"".join(fake.chat_chunks(text)), id="chat-text"),
        pytest.param(chat, b"".join(fake.chat_chunks(with_tool)), id="chat-tool"),
        pytest.param(responses, b"".join(fake.responses_events(text)), id="responses-text"),
        pytest.param(responses, b"".join(fake.responses_events(with_tool)), id="responses-tool"),
    ]


@pytest.mark.parametrize(("wire", "data"), fake_streams())
def test_fast_path_changes_nothing_on_fake_streams(wire: ModuleType, data: bytes) -> None:
    check_same(wire, data)
    if wire is chat:
        check_same(wire, data.replace(b'"usage": null', b'"usage":null'), hide_usage=True)


def test_fast_path_fires_on_text_deltas() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there, a longer answer please"}]}
    assert check_same(anthropic, b"".join(fake.anthropic_events(body))) > 0
    assert check_same(chat, b"".join(fake.chat_chunks(body))) > 0


def captured_streams() -> list[Any]:
    params = fixture_params(FIXTURES)
    if FIXTURES is None:
        return params  # one skip, saying the fixtures are absent
    return [p for p in params if any(name.startswith("streaming") for name in load(p.values[0])[1])]


@pytest.mark.parametrize("path", captured_streams())
def test_fast_path_changes_nothing_on_captured_streams(path: Path) -> None:
    assert FIXTURES is not None
    parts = path.relative_to(FIXTURES).parts
    wire = next((WIRE[p] for p in parts if p in WIRE), None)
    assert wire is not None, parts
    _, sections = load(path)
    for data in [text.encode() for name, text in sections.items() if name.startswith("streaming")]:
        check_same(wire, data)
