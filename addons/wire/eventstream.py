"""AWS event-stream decoding for Bedrock runtime responses (pure: no I/O, no mitmproxy).

Bedrock's streaming operations (InvokeModelWithResponseStream, ConverseStream)
answer with `application/vnd.amazon.eventstream`: binary frames

    total_length u32 | headers_length u32 | prelude_crc u32 | headers | payload | message_crc u32

(big-endian; CRC32 of the first 8 bytes, then of everything before the last 4).

- `EventStreamDecoder` turns arbitrary network chunks into `StreamFrame`s.
- `invoke_chunk_event` / `converse_event` read one frame of either operation.
- `BedrockToAnthropicSSE` converts an InvokeModelWithResponseStream body into
  the Anthropic SSE stream a first-party `/v1/messages` client expects.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from botocore.eventstream import EventStreamBuffer, ParserError

# Prelude (12 bytes) + message CRC (4 bytes): the smallest possible frame.
_PRELUDE_LEN = 12
_MIN_FRAME_LEN = _PRELUDE_LEN + 4
# The spec's limits (botocore enforces the same); checked before buffering a
# frame so a garbled length cannot make us wait for 4 GiB.
_MAX_HEADERS_LEN = 128 * 1024
_MAX_PAYLOAD_LEN = 24 * 1024 * 1024

# Bedrock adds this to the final `message_stop` of InvokeModelWithResponseStream.
INVOCATION_METRICS_KEY = "amazon-bedrock-invocationMetrics"


@dataclass(slots=True, frozen=True)
class StreamFrame:
    """One decoded event-stream message."""

    message_type: str  # "event" | "exception" | "error"
    event_type: str | None  # ":event-type" (chunk, messageStart, contentBlockDelta, metadata, ...)
    exception_type: str | None  # ":exception-type" (exception frames) or ":error-code" (error frames)
    payload: bytes  # raw payload
    # ":error-message" of `error` frames, whose payload is usually empty.
    error_message: str | None = None


class EventStreamError(Exception):
    """The byte stream is not a valid event stream (CRC mismatch, bad prelude, bad headers).

    `frames` holds the frames that decoded cleanly in the same `feed` call
    before the bad one, so a caller can still use them.
    """

    def __init__(self, message: str, frames: list[StreamFrame] | None = None) -> None:
        super().__init__(message)
        self.frames: list[StreamFrame] = frames or []


class EventStreamDecoder:
    """Incremental decoder: feed network chunks, get complete frames.

    Framing is done here on a bytearray (so a frame split over many chunks
    costs linear time); each complete frame is then handed to botocore's
    `EventStreamBuffer`, which checks both CRCs and parses the headers.
    After an error the decoder is poisoned: the stream cannot be resynchronised,
    so every later `feed` raises again.
    """

    __slots__ = ("_buf", "_failure")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[StreamFrame]:
        if self._failure is not None:
            raise EventStreamError(f"decoder already failed: {self._failure}")
        self._buf += chunk
        frames: list[StreamFrame] = []
        while len(self._buf) >= _PRELUDE_LEN:
            try:
                total = self._frame_length()
            except EventStreamError as exc:
                self._fail(str(exc), frames)
            if len(self._buf) < total:
                break
            raw = bytes(self._buf[:total])
            del self._buf[:total]
            try:
                frames.append(_decode_frame(raw))
            except EventStreamError as exc:
                self._fail(str(exc), frames)
        return frames

    def _frame_length(self) -> int:
        total, headers_len, prelude_crc = struct.unpack_from(">III", self._buf, 0)
        computed = binascii.crc32(self._buf[:8]) & 0xFFFFFFFF
        if computed != prelude_crc:
            raise EventStreamError(f"prelude CRC mismatch (expected {prelude_crc:#010x}, computed {computed:#010x})")
        # A valid CRC over nonsense lengths would otherwise stall or loop forever.
        if total < _MIN_FRAME_LEN + headers_len:
            raise EventStreamError(f"malformed prelude: total length {total} < headers {headers_len} + 16")
        if headers_len > _MAX_HEADERS_LEN:
            raise EventStreamError(f"malformed prelude: headers length {headers_len} over the 128 KiB limit")
        if total - headers_len - _MIN_FRAME_LEN > _MAX_PAYLOAD_LEN:
            raise EventStreamError(f"malformed prelude: payload length over the 24 MiB limit (total {total})")
        return total

    def _fail(self, message: str, frames: list[StreamFrame]) -> NoReturn:
        self._failure = message
        self._buf.clear()
        raise EventStreamError(message, frames)


def _decode_frame(raw: bytes) -> StreamFrame:
    """Decode one complete frame with botocore (which verifies the message CRC)."""
    buf = EventStreamBuffer()
    buf.add_data(raw)
    try:
        message = next(buf)
    except StopIteration:  # cannot happen for a complete frame; be explicit if it does
        raise EventStreamError("incomplete frame handed to botocore") from None
    except ParserError as exc:  # ChecksumMismatch, DuplicateHeader, length errors
        raise EventStreamError(f"{type(exc).__name__}: {exc}") from exc
    except (KeyError, IndexError, struct.error, UnicodeDecodeError) as exc:
        # Unknown header type byte, truncated header value, bad UTF-8 name.
        raise EventStreamError(f"malformed headers: {type(exc).__name__}: {exc}") from exc
    headers: dict[str, Any] = message.headers
    message_type = _str_header(headers, ":message-type") or "event"
    if message_type == "error":
        exception_type = _str_header(headers, ":error-code")
    else:
        exception_type = _str_header(headers, ":exception-type")
    return StreamFrame(
        message_type=message_type,
        event_type=_str_header(headers, ":event-type"),
        exception_type=exception_type,
        payload=bytes(message.payload),
        error_message=_str_header(headers, ":error-message"),
    )


def _str_header(headers: dict[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# ---------------------------------------------------------------------------
# InvokeModelWithResponseStream


def invoke_chunk_event(frame: StreamFrame) -> dict | None:
    """The Anthropic event carried by an InvokeModelWithResponseStream `chunk` frame.

    Returns None for frames that are not `chunk` events (exceptions, unknown
    event types). Raises `EventStreamError` when a chunk's payload is not
    `{"bytes": <base64 of a JSON object>}`.
    """
    if frame.message_type != "event" or frame.event_type != "chunk":
        return None
    try:
        wrapper = orjson.loads(frame.payload)
        inner = base64.b64decode(wrapper["bytes"], validate=True)
        event = orjson.loads(inner)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EventStreamError(f"undecodable chunk payload: {type(exc).__name__}: {exc}") from exc
    if not isinstance(event, dict):
        raise EventStreamError(f"chunk payload is a JSON {type(event).__name__}, not an object")
    return event


def anthropic_sse(event: dict) -> bytes:
    """Render one Anthropic stream event as SSE: `event: <type>` + compact `data:` JSON."""
    return b"event: " + str(event.get("type", "message")).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


# Bedrock stream exception -> Anthropic error type. Keys are lower-cased:
# Bedrock sends camelCase in `:exception-type`, botocore shapes use PascalCase.
_EXCEPTION_ERROR_TYPES: dict[str, str] = {
    "throttlingexception": "rate_limit_error",
    "servicequotaexceededexception": "rate_limit_error",
    "validationexception": "invalid_request_error",
    "accessdeniedexception": "permission_error",
    "resourcenotfoundexception": "not_found_error",
    "modelstreamerrorexception": "api_error",
    "internalserverexception": "api_error",
    "modelerrorexception": "api_error",
    "serviceunavailableexception": "overloaded_error",
    "modelnotreadyexception": "overloaded_error",
    "modeltimeoutexception": "timeout_error",
}


def exception_to_anthropic_error(frame: StreamFrame) -> dict:
    """An `exception`/`error` frame as an Anthropic `error` stream event."""
    kind = frame.exception_type or "unknownException"
    body = _json_object(frame.payload)
    message = body.get("message") or body.get("Message") or frame.error_message or kind
    message = f"{message}{_original_detail(body.get('originalStatusCode'), body.get('originalMessage'))}"
    return {
        "type": "error",
        "error": {"type": _EXCEPTION_ERROR_TYPES.get(kind.lower(), "api_error"), "message": str(message)},
    }


def _original_detail(status: Any, message: Any) -> str:
    # modelStreamErrorException wraps the model's own failure; keep it visible.
    if status is not None and message:
        return f" (original status {status}: {message})"
    if status is not None:
        return f" (original status {status})"
    return f" (original message: {message})" if message else ""


def _json_object(payload: bytes) -> dict:
    try:
        value = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        return {"message": payload.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {}


def _api_error(message: str) -> dict:
    return {"type": "error", "error": {"type": "api_error", "message": message}}


class BedrockToAnthropicSSE:
    """The stream tap's converter: InvokeModelWithResponseStream bytes in, Anthropic SSE bytes out.

    Every Anthropic event dict that goes out (decoded chunks, plus the `error`
    events synthesised for exception frames and corruption) is passed to
    `on_event` when one is given; otherwise it is appended to `events`. The
    gateway should pass a callback that feeds its Anthropic stream parser, so
    long streams are not kept in memory.

    `invocation_metrics` is the `amazon-bedrock-invocationMetrics` object of the
    final `message_stop`. That key is removed from the SSE sent to the client
    (it is not part of Anthropic's wire format) but kept in the event dict.
    After an exception frame or corruption, everything further is ignored.
    """

    def __init__(self, on_event: Callable[[dict], None] | None = None) -> None:
        self._decoder = EventStreamDecoder()
        self._on_event = on_event
        self._done = False
        self._closed = False
        self.events: list[dict] = []
        self.invocation_metrics: dict | None = None

    @property
    def finished(self) -> bool:
        """True once an exception frame or a corrupted frame ended the stream."""
        return self._done

    def feed(self, chunk: bytes) -> bytes:
        """Convert one network chunk. Never raises."""
        if self._done or not chunk:
            return b""
        out: list[bytes] = []
        try:
            frames = self._decoder.feed(chunk)
        except EventStreamError as exc:
            self._frames_to_sse(exc.frames, out)
            if not self._done:
                self._finish(_api_error(f"corrupted event stream frame from Bedrock: {exc}"), out)
            return b"".join(out)
        self._frames_to_sse(frames, out)
        return b"".join(out)

    def close(self) -> bytes:
        """End of the upstream body: report a frame cut short. Never raises; idempotent."""
        if self._closed:
            return b""
        self._closed = True
        out: list[bytes] = []
        if not self._done and self._decoder.buffered:
            self._finish(
                _api_error(f"Bedrock event stream ended mid-frame ({self._decoder.buffered} bytes left over)"),
                out,
            )
        return b"".join(out)

    def _frames_to_sse(self, frames: list[StreamFrame], out: list[bytes]) -> None:
        for frame in frames:
            if self._done:
                return
            if frame.message_type in ("exception", "error"):
                self._finish(exception_to_anthropic_error(frame), out)
                return
            try:
                event = invoke_chunk_event(frame)
            except EventStreamError as exc:
                self._finish(_api_error(f"corrupted event stream frame from Bedrock: {exc}"), out)
                return
            if event is not None:
                self._emit(event, out)

    def _emit(self, event: dict, out: list[bytes]) -> None:
        if event.get("type") == "message_stop" and INVOCATION_METRICS_KEY in event:
            metrics = event[INVOCATION_METRICS_KEY]
            self.invocation_metrics = metrics if isinstance(metrics, dict) else None
            out.append(anthropic_sse({k: v for k, v in event.items() if k != INVOCATION_METRICS_KEY}))
        else:
            out.append(anthropic_sse(event))
        if self._on_event is not None:
            self._on_event(event)
        else:
            self.events.append(event)

    def _finish(self, error_event: dict, out: list[bytes]) -> None:
        self._emit(error_event, out)
        self._done = True


# ---------------------------------------------------------------------------
# ConverseStream


def converse_event(frame: StreamFrame) -> tuple[str, dict] | None:
    """A ConverseStream event frame as (event type, JSON payload), e.g.
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}).

    Returns None for exception/error frames and for payloads that are not a
    JSON object (those cannot be Converse events).
    """
    if frame.message_type != "event" or not frame.event_type:
        return None
    try:
        payload = orjson.loads(frame.payload) if frame.payload else {}
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    payload.pop("p", None)  # random padding Bedrock adds against length side channels
    return frame.event_type, payload
