"""Test-only AWS event-stream encoder (the inverse of botocore's EventStreamBuffer).

Frame layout (big-endian):
    total_length u32 | headers_length u32 | prelude_crc u32 | headers | payload | message_crc u32
prelude_crc = CRC32(first 8 bytes); message_crc = CRC32(everything before it).
Header: name_len u8 | name | type u8 | value (bool 0/1 no value, int32 4, int64 5,
bytes 6 and string 7 with a u16 length).
"""

from __future__ import annotations

import base64
import binascii
import struct

import orjson

HeaderValue = str | bool | int | bytes

_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode()
    out = struct.pack(">B", len(raw_name)) + raw_name
    if isinstance(value, bool):  # before int: bool is an int subclass
        return out + struct.pack(">B", 0 if value else 1)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return out + struct.pack(">Bi", 4, value)
        return out + struct.pack(">Bq", 5, value)
    if isinstance(value, bytes):
        return out + struct.pack(">BH", 6, len(value)) + value
    raw = value.encode()
    return out + struct.pack(">BH", 7, len(raw)) + raw


def encode_frame(headers: dict[str, HeaderValue], payload: bytes) -> bytes:
    raw_headers = b"".join(_encode_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    head = struct.pack(">II", total, len(raw_headers))
    prelude = head + struct.pack(">I", binascii.crc32(head) & 0xFFFFFFFF)
    body = prelude + raw_headers + payload
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def _padding(n: int) -> str:
    return (_PADDING * (n // len(_PADDING) + 1))[:n]


def chunk_frame(event: dict, *, padding: int = 7) -> bytes:
    """An InvokeModelWithResponseStream `chunk` event carrying one Anthropic event."""
    inner = base64.b64encode(orjson.dumps(event)).decode()
    payload = orjson.dumps({"bytes": inner, "p": _padding(padding)})
    return encode_frame(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}, payload
    )


def exception_frame(exception_type: str, message: str, **extra: object) -> bytes:
    """An exception message, e.g. exception_frame("throttlingException", "Too many requests")."""
    payload = orjson.dumps({"message": message, **extra})
    return encode_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )


def error_frame(code: str, message: str) -> bytes:
    """An `error` message: code and message travel in headers, the payload is empty."""
    return encode_frame({":message-type": "error", ":error-code": code, ":error-message": message}, b"")


def converse_frame(event_type: str, payload: dict, *, padding: int = 5) -> bytes:
    """A ConverseStream event (messageStart, contentBlockDelta, ..., metadata)."""
    body = orjson.dumps({**payload, "p": _padding(padding)}) if padding else orjson.dumps(payload)
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, body
    )


def corrupt_crc(frame: bytes) -> bytes:
    """The same frame with its message CRC flipped (the prelude stays valid)."""
    return frame[:-4] + bytes(b ^ 0xFF for b in frame[-4:])


def corrupt_payload(frame: bytes) -> bytes:
    """The same frame with one payload byte changed, so the message CRC no longer matches."""
    i = len(frame) - 5
    return frame[:i] + bytes([frame[i] ^ 0x01]) + frame[i + 1 :]
