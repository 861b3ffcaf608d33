"""The frames primary and workers exchange on their unix socket: a kind byte, a payload length, the payload."""

from __future__ import annotations

import asyncio
import struct
from typing import BinaryIO

HEADER = struct.Struct("!cI")  # kind, payload length

# Frame kinds.
RECORDS, HELLO, ADMIN, TOUCH, METRICS, BYE = b"R", b"H", b"A", b"T", b"M", b"B"  # worker → primary
STATE, ANSWER = b"S", b"a"  # primary → worker


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def read_frame(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    """The next frame from a blocking stream (the primary's reader threads); None once the stream ends."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    kind, size = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return kind, payload


async def read_frame_async(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next frame on a worker's event loop; raises IncompleteReadError once the stream ends."""
    kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
    return kind, await reader.readexactly(size)
