"""Incremental Server-Sent Events decoder.

Feeds arbitrary network chunks, returns complete event blocks. Every returned
event keeps the exact bytes it was decoded from (`raw`), so a caller can relay,
drop or rewrite whole events and the concatenation of all `raw` values is the
input stream, byte for byte, however it was chunked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_CR = 0x0D


@dataclass(slots=True, frozen=True)
class SSEEvent:
    event: str | None  # value of the `event:` field, None if absent
    data: str | None  # data fields joined with "\n"; None when the block had no data field
    raw: bytes  # the exact bytes of this block, including its terminating blank line


def lone_block(chunk: bytes) -> tuple[str | None, bytes] | None:
    """`(event name, data)` when `chunk` is exactly one plain block (an optional `event: NAME` line,
    one `data: DATA` line, the blank line, LF line ends), else None.

    Streams arrive one such block per network chunk almost always; a caller whose decoder is
    `idle` can judge these without decoding them (they decode to `SSEEvent(name, data, chunk)`).
    """
    if not chunk.endswith(b"\n\n") or b"\r" in chunk:
        return None
    name: str | None = None
    start = 0
    if chunk.startswith(b"event: "):
        start = chunk.index(b"\n") + 1
        name = chunk[7 : start - 1].decode("utf-8", "replace")
    end = len(chunk) - 2
    if not chunk.startswith(b"data: ", start) or chunk.find(b"\n", start) != end:
        return None
    return name, chunk[start + 6 : end]


class SSEDecoder:
    """Splits a byte stream into SSE blocks (one block = lines up to a blank line).

    Lines end in `\\n`, `\\r\\n` or `\\r`, mixed freely. A `\\r` that is the last
    byte received so far is not treated as a line end until the next byte (or
    `close()`) shows whether a `\\n` follows, so chunking never changes results.
    """

    __slots__ = ("_at_stream_start", "_buf", "_data", "_event", "_line_start", "_searched_to")

    def __init__(self) -> None:
        self._buf = bytearray()  # starts at the first byte of the current (incomplete) block
        self._line_start = 0  # offset in _buf of the first line not yet interpreted
        self._searched_to = 0  # offset in _buf up to which no line end exists
        self._at_stream_start = True
        self._event: str | None = None
        self._data: list[bytes] = []  # values of the current block's data fields

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """Between blocks and past the stream's start: a whole block fed now changes no state."""
        return not self._buf and not self._at_stream_start

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if (self.idle and chunk[-2:] == b"\n\n" and chunk[0] != 0x0A
                and b"\r" not in chunk and b"\n\n\n" not in chunk):
            return self._whole_blocks(chunk)
        self._buf += chunk
        return self._drain(final=False)

    def _whole_blocks(self, chunk: bytes) -> list[SSEEvent]:
        """Fast path (the usual network chunk): nothing buffered, LF-only, ends on a block boundary,
        no empty blocks. Same events as `_drain`, without copying through the buffer."""
        blocks = chunk[:-2].split(b"\n\n")
        events: list[SSEEvent] = []
        for block in blocks:
            name: str | None = None
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if line[0] == 0x3A:  # comment (lines are never empty here)
                    continue
                field_name, sep, value = line.partition(b":")
                if sep and value[:1] == b" ":
                    value = value[1:]
                if field_name == b"data":
                    data.append(value)
                elif field_name == b"event":
                    name = value.decode("utf-8", "replace")
            events.append(SSEEvent(
                name,
                (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace") if data else None,
                chunk if len(blocks) == 1 else block + b"\n\n",
            ))
        return events

    def close(self) -> list[SSEEvent]:
        events = self._drain(final=True)
        if self._buf:
            if self._line_start < len(self._buf):
                self._interpret_line(bytes(self._buf[self._line_start :]))
            events.append(self._take_event(0, len(self._buf)))
            self._buf.clear()
            self._line_start = self._searched_to = 0
        return events

    def _drain(self, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buf = self._buf
        search_from = max(self._line_start, self._searched_to)
        block_end = 0
        while True:
            match = _LINE_END.search(buf, search_from)
            if match is None:
                self._searched_to = len(buf)
                break
            line_stop, line_end = match.span()
            if line_end == len(buf) and buf[line_stop] == _CR and not final:
                # Might be the first half of "\r\n": decide when more bytes arrive.
                self._searched_to = line_stop
                break
            if self._is_blank(self._line_start, line_stop):
                events.append(self._take_event(block_end, line_end))
                block_end = line_end
            else:
                self._interpret_line(bytes(buf[self._line_start : line_stop]))
            self._line_start = search_from = line_end
        if block_end:
            del buf[:block_end]
            self._line_start -= block_end
            self._searched_to = max(self._searched_to - block_end, 0)
        return events

    def _is_blank(self, start: int, stop: int) -> bool:
        if start == stop:
            return True
        return self._at_stream_start and stop - start == len(_BOM) and self._buf[start:stop] == _BOM

    def _interpret_line(self, line: bytes) -> None:
        if self._at_stream_start:
            self._at_stream_start = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if not line or line[0] == 0x3A:  # ":" starts a comment
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # id, retry and unknown fields carry nothing the gateway needs.

    def _take_event(self, start: int, end: int) -> SSEEvent:
        """Builds the event for the block at _buf[start:end] and resets the field state."""
        self._at_stream_start = False
        data = b"\n".join(self._data).decode("utf-8", "replace") if self._data else None
        event = SSEEvent(self._event, data, bytes(self._buf[start:end]))
        self._event = None
        self._data = []
        return event
