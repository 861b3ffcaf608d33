"""Feed an SSE byte stream to a wire parser, cut at chosen offsets (for split-invariance tests)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from addons.wire.model import ResponseSummary
from addons.wire.sse import SSEDecoder
from tests.txtar import SKIP_REASON, load, split_http


def replay(parser: Any, data: bytes, cuts: list[int] | None = None) -> ResponseSummary:
    decoder = SSEDecoder()
    start = 0
    for cut in sorted(set(cuts or [])):
        for event in decoder.feed(data[start:cut]):
            parser.on_event(event)
        start = cut
    for event in decoder.feed(data[start:]) + decoder.close():
        parser.on_event(event)
    return parser.summary()


def fixture_params(directory: Path | None) -> list[Any]:
    """One pytest param per txtar file under `directory`, or one skip when the fixtures are absent."""
    if directory is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON))]
    return [pytest.param(path, id=str(path.relative_to(directory).with_suffix("")))
            for path in sorted(directory.rglob("*.txtar"))]


def parse_fixture(wire: ModuleType, path: Path, stride: int) -> dict[str, Any]:
    """Every section of a fixture, parsed by `wire`: request -> RequestInfo, others -> ResponseSummary.

    Streams are also parsed cut every `stride` bytes and must give the same summary.
    A body that is not JSON (a deliberately wrong response format) parses to None.
    """
    _, sections = load(path)
    parsed: dict[str, Any] = {}
    for name, text in sections.items():
        if name == "request":
            parsed[name] = wire.parse_request(orjson.loads(text))
        elif (http := split_http(text)) is not None:
            parsed[name] = wire.parse_response(orjson.loads(http[1]))
        elif name.startswith("streaming"):
            data = text.encode()
            parsed[name] = replay(wire.StreamParser(), data)
            assert replay(wire.StreamParser(), data, list(range(0, len(data), stride))) == parsed[name]
        else:
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                parsed[name] = None
                continue
            parsed[name] = wire.parse_response(body)
    return parsed
