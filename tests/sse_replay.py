"""Feed an SSE byte stream to a wire parser, cut at chosen offsets (for split-invariance tests)."""

from __future__ import annotations

from typing import Any

from addons.wire.model import ResponseSummary
from addons.wire.sse import SSEDecoder


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
