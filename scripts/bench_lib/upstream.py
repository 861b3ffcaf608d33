"""A fast fake LLM upstream for benchmarks: one asyncio process, raw HTTP/1.1, no framework.

    python -m bench_lib.upstream --port 0 [--tls-port 0 --tls-cert C --tls-key K --tls-host 127.0.0.2 ...]

Prints one line `READY {"port": P, "tls_port": T}` on stdout when listening.

- Keep-alive, TCP_NODELAY, Content-Length requests; responses are Content-Length
  (blocking JSON) or chunked `text/event-stream` with one chunk per event.
- Any POST path ending in `/messages` answers in Anthropic's format, one ending
  in `/chat/completions` in OpenAI's; a body with `"stream": true` streams.
- The request body may carry `bench:events=N,interval_ms=X` (anywhere, e.g. in the
  user message, so it survives a gateway that rebuilds the request): a stream of N
  events, X ms apart (0: back to back). Every content event carries its send
  time as `@T<time.monotonic_ns()>@` in its text.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench_lib.common import no_delay

_PARAMS = re.compile(rb"bench:events=(\d+),interval_ms=(\d+(?:\.\d+)?)")
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CONN_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)

DEFAULT_EVENTS = 20
MAX_HEAD = 64 * 1024

ANTHROPIC_BODY = orjson.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench",
    "content": [{"type": "text", "text": "Hello from the bench upstream."}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 12, "cache_read_input_tokens": 100,
              "cache_creation_input_tokens": 7},
})
CHAT_BODY = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream.",
                                         "refusal": None}, "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 130, "completion_tokens": 9, "total_tokens": 139,
              "prompt_tokens_details": {"cached_tokens": 100}},
})
MODELS_BODY = orjson.dumps({"object": "list", "data": [{"id": "gpt-bench", "object": "model"}]})
NOT_FOUND_BODY = orjson.dumps({"error": {"message": "not found", "type": "not_found"}})


def _json_response(status: bytes, body: bytes, close: bool) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n" + body)


BLOCKING = {
    "anthropic": _json_response(b"200 OK", ANTHROPIC_BODY, False),
    "openai": _json_response(b"200 OK", CHAT_BODY, False),
}
SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def anthropic_events(n: int) -> tuple[list[bytes], bytes, bytes, list[bytes]]:
    """(events before the deltas, delta prefix, delta suffix, events after); n >= 6 in total."""
    start = {"type": "message_start", "message": {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 7}}}
    head = [
        b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n",
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n',
    ]
    tail = [
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"output_tokens":' + str(n).encode() + b"}}\n\n",
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    prefix = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
              b'"delta":{"type":"text_delta","text":"')
    return head, prefix, b' "}}\n\n', tail


def openai_events(n: int, usage: bool) -> tuple[list[bytes], bytes, bytes, list[bytes]]:
    extra = b',"usage":null' if usage else b""
    base = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-bench",'
    head = [b"data: " + base + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]' + extra + b"}\n\n"]
    tail = [b"data: " + base + b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]'
            + extra + b"}\n\n"]
    if usage:
        tail.append(b"data: " + base + b'"choices":[],"usage":{"prompt_tokens":130,"completion_tokens":'
                    + str(n).encode() + b',"total_tokens":' + str(130 + n).encode() + b"}}\n\n")
    tail.append(b"data: [DONE]\n\n")
    prefix = b"data: " + base + b'"choices":[{"index":0,"delta":{"content":"'
    suffix = b' "},"logprobs":null,"finish_reason":null}]' + extra + b"}\n\n"
    return head, prefix, suffix, tail


class Stream:
    """One streaming response, driven by loop callbacks (cheaper than a task per stream)."""

    __slots__ = ("conn", "deltas", "done", "head", "interval", "loop", "next_at", "prefix", "suffix", "tail")

    def __init__(self, conn: Conn, head: list[bytes], prefix: bytes, suffix: bytes, tail: list[bytes],
                 deltas: int, interval: float, done: Callable[[], None]) -> None:
        self.conn = conn
        self.head, self.prefix, self.suffix, self.tail = head, prefix, suffix, tail
        self.deltas = deltas
        self.interval = interval
        self.done = done
        self.loop = asyncio.get_running_loop()
        self.next_at = 0.0

    def start(self) -> None:
        transport = self.conn.transport
        assert transport is not None
        transport.write(SSE_HEAD + b"".join(_chunk(e) for e in self.head))
        if self.interval <= 0:
            while self.deltas > 0 and not transport.is_closing():
                self._send_delta()
            self._finish()
            return
        self.next_at = self.loop.time()
        self._tick()

    def _send_delta(self) -> None:
        transport = self.conn.transport
        assert transport is not None
        stamp = b"@T%d@" % time.monotonic_ns()
        transport.write(_chunk(self.prefix + stamp + self.suffix))
        self.deltas -= 1

    def _tick(self) -> None:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        if self.deltas > 0:
            self._send_delta()
            self.next_at += self.interval
            self.loop.call_at(self.next_at, self._tick)
            return
        self._finish()

    def _finish(self) -> None:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        transport.write(b"".join(_chunk(e) for e in self.tail) + b"0\r\n\r\n")
        self.done()


class Conn(asyncio.Protocol):
    __slots__ = ("buf", "busy", "transport")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = no_delay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        buf = self.buf
        while not self.busy and self.transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(buf[: end + 2])
            m = _CONTENT_LENGTH.search(head)
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        line_end = head.find(b"\r\n")
        method, _, rest = head[:line_end].partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        close = _CONN_CLOSE.search(head) is not None
        if method == b"POST" and (path.endswith(b"/messages") or path.endswith(b"/chat/completions")):
            api = "anthropic" if path.endswith(b"/messages") else "openai"
            if _STREAM.search(body) is None:
                transport.write(BLOCKING[api])
            else:
                self.stream(api, body)
                return
        elif method == b"GET" and path.endswith(b"/models"):
            transport.write(_json_response(b"200 OK", MODELS_BODY, close))
        elif method == b"GET" and path == b"/healthz":
            transport.write(_json_response(b"200 OK", b'{"ok":true}', close))
        else:
            transport.write(_json_response(b"404 Not Found", NOT_FOUND_BODY, close))
        if close:
            transport.close()

    def stream(self, api: str, body: bytes) -> None:
        m = _PARAMS.search(body)
        events = int(m.group(1)) if m else DEFAULT_EVENTS
        interval = float(m.group(2)) / 1000 if m else 0.0
        if api == "anthropic":
            head, prefix, suffix, tail = anthropic_events(events)
            deltas = max(1, events - 5)
        else:
            head, prefix, suffix, tail = openai_events(events, _INCLUDE_USAGE.search(body) is not None)
            deltas = max(1, events - 3)
        self.busy = True
        Stream(self, head, prefix, suffix, tail, deltas, interval, self._stream_done).start()

    def _stream_done(self) -> None:
        self.busy = False
        if self.buf:
            self.process()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    plain = await loop.create_server(Conn, args.host, args.port, backlog=4096, reuse_address=True)
    servers.append(plain)
    ready: dict[str, Any] = {"port": plain.sockets[0].getsockname()[1]}
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        port = args.tls_port
        for host in args.tls_host or ["127.0.0.1"]:
            tls = await loop.create_server(Conn, host, port, ssl=ctx, backlog=4096, reuse_address=True)
            port = tls.sockets[0].getsockname()[1]  # every TLS host on the same port
            servers.append(tls)
        ready["tls_port"] = port
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("READY " + orjson.dumps(ready).decode(), flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-host", action="append", help="address for the TLS listener (repeatable)")
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
