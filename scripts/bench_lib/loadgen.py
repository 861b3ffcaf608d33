"""The load generator: one asyncio process, raw HTTP/1.1 over keep-alive connections.

    python -m bench_lib.loadgen '<spec JSON>'    (prints one JSON result line)

Spec keys:
  mode        "blocking" (closed loop), "stream" (streams one after another per
              connection) or "hold" (one long stream per connection, all open at once)
  target      {"host", "port", "tls": bool, "sni", "ca",
               "proxy": {"host", "port", "auth"} | null, "connect": "host:port"}
  requests    [{"path", "headers": {...}, "body": "..."}], used round robin
  host_header the Host header to send
  concurrency connections (blocking/stream) or streams (hold)
  duration, warmup   seconds (blocking); count: stop after this many requests instead
  streams     streams per connection (stream mode)
  expect_events       stamped events each stream must deliver (stream/hold)
  ramp        seconds over which hold-mode connections are opened
  timeout     seconds for one request / the whole hold phase
"""

from __future__ import annotations

import asyncio
import base64
import re
import resource
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench_lib.common import STAMP_RE, no_delay, percentiles, rounded

_STAMP = re.compile(STAMP_RE)
_HEAD, _BODY, _BODY_EOF, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER = range(7)
_CARRY = 48


@dataclass(slots=True)
class Result:
    status: int = 0
    ttfb_ns: int = 0
    total_ns: int = 0
    body_bytes: int = 0
    stamps: int = 0
    head: bytes = b""


@dataclass
class Stats:
    latencies: list[int] = field(default_factory=list)  # ns
    ttfb: list[int] = field(default_factory=list)  # ns
    delays: list[int] = field(default_factory=list)  # ns
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    events: int = 0

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])


class ClientConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with an incremental response parser."""

    def __init__(self, delays: list[int] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _HEAD
        self.remaining = 0
        self.waiter: asyncio.Future[Result] | None = None
        self.result = Result()
        self.t0 = 0
        self.scan = False
        self.carry = b""
        self.delays = delays
        self.closed = False
        self.close_after = False
        self.head_only = False  # CONNECT: the response has no body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = no_delay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == _BODY_EOF and self.waiter is not None and not self.waiter.done():
            self._complete(time.monotonic_ns())
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by peer'}"))

    def eof_received(self) -> bool | None:
        return None

    def request(self, data: bytes, scan: bool = False, head_only: bool = False) -> asyncio.Future[Result]:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.result = Result()
        self.scan = scan
        self.head_only = head_only
        self.carry = b""
        self.state = _HEAD
        self.t0 = time.monotonic_ns()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += data
        try:
            self._parse(now)
        except Exception as e:  # a malformed response: fail this request, drop the connection
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError(f"bad response: {e!r}"))
            if self.transport is not None:
                self.transport.close()

    def _body(self, data: bytes | bytearray, now: int) -> None:
        result = self.result
        result.body_bytes += len(data)
        if not self.scan:
            return
        text = self.carry + bytes(data)
        last = 0
        delays = self.delays
        for m in _STAMP.finditer(text):
            result.stamps += 1
            if delays is not None:
                delays.append(now - int(m.group(1)))
            last = m.end()
        self.carry = text[last:][-_CARRY:]

    def _complete(self, now: int) -> None:
        self.result.total_ns = now - self.t0
        self.state = _HEAD
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self.result)
        if self.close_after and self.transport is not None:
            self.transport.close()
            self.closed = True

    def _parse(self, now: int) -> None:
        buf = self.buf
        while buf or self.state == _BODY:
            state = self.state
            if state == _HEAD:
                if self.waiter is None or self.waiter.done():
                    return  # unexpected bytes; leave them
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                status = int(head[9:12])
                if status == 100:
                    continue
                result = self.result
                result.status = status
                result.head = head
                result.ttfb_ns = now - self.t0
                lower = head.lower()
                self.close_after = b"\r\nconnection: close" in lower
                if self.head_only:
                    self._complete(now)
                    return
                if b"\r\ntransfer-encoding: chunked" in lower:
                    self.state = _CHUNK_SIZE
                else:
                    m = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
                    if m is not None:
                        self.remaining = int(m.group(1))
                        self.state = _BODY
                    else:
                        self.state = _BODY_EOF
            elif state == _BODY:
                take = min(len(buf), self.remaining)
                if take:
                    self._body(buf[:take], now)
                    del buf[:take]
                    self.remaining -= take
                if self.remaining == 0:
                    self._complete(now)
                else:
                    return
            elif state == _BODY_EOF:
                self._body(buf, now)
                buf.clear()
                return
            elif state == _CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(bytes(buf[:i]).split(b";")[0], 16)
                del buf[: i + 2]
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.remaining = size
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                take = min(len(buf), self.remaining)
                self._body(buf[:take], now)
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self.state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                del buf[: i + 2]
                if i == 0:
                    self._complete(now)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class Target:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.host: str = spec["host"]
        self.port: int = int(spec["port"])
        self.tls: bool = bool(spec.get("tls"))
        self.proxy: dict[str, Any] | None = spec.get("proxy")
        self.connect: str | None = spec.get("connect")
        self.sni: str | None = spec.get("sni")
        self.ssl: ssl.SSLContext | None = None
        if self.tls:
            self.ssl = ssl.create_default_context(cafile=spec.get("ca"))

    async def open(self, delays: list[int] | None) -> ClientConn:
        loop = asyncio.get_running_loop()
        if self.proxy is None:
            _, conn = await loop.create_connection(
                lambda: ClientConn(delays), self.host, self.port, ssl=self.ssl,
                server_hostname=(self.sni or self.host) if self.ssl else None)
            return conn
        _, conn = await loop.create_connection(lambda: ClientConn(delays), self.proxy["host"], self.proxy["port"])
        auth = base64.b64encode(self.proxy["auth"].encode()).decode()
        req = (f"CONNECT {self.connect} HTTP/1.1\r\nhost: {self.connect}\r\n"
               f"proxy-authorization: Basic {auth}\r\n\r\n").encode()
        res = await conn.request(req, head_only=True)
        if res.status != 200:
            conn.close()
            raise ConnectionError(f"CONNECT {self.connect} answered {res.status}: {res.head[:200]!r}")
        if self.ssl is not None:
            assert conn.transport is not None
            host = (self.connect or "").rpartition(":")[0]
            tls_transport = await loop.start_tls(conn.transport, conn, self.ssl, server_hostname=self.sni or host)
            assert isinstance(tls_transport, asyncio.Transport)
            conn.transport = tls_transport
        return conn


def build_requests(spec: dict[str, Any]) -> list[bytes]:
    out = []
    for r in spec["requests"]:
        body = r["body"].encode()
        lines = [f"POST {r['path']} HTTP/1.1", f"host: {spec['host_header']}", "content-type: application/json",
                 f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in r.get("headers", {}).items()]
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return out


async def run_blocking(spec: dict[str, Any], target: Target, stats: Stats) -> float:
    reqs = build_requests(spec)
    concurrency = int(spec["concurrency"])
    count = spec.get("count")
    timeout = float(spec.get("timeout", 30))
    start = time.monotonic()
    measure_from = start + float(spec.get("warmup", 0))
    end = measure_from + float(spec.get("duration", 0)) if count is None else float("inf")
    issued = 0

    async def worker(wid: int) -> None:
        nonlocal issued
        conn: ClientConn | None = None
        i = wid
        while True:
            now = time.monotonic()
            if now >= end or (count is not None and issued >= count):
                break
            issued += 1
            try:
                if conn is None or conn.closed:
                    conn = await target.open(None)
                res = await asyncio.wait_for(conn.request(reqs[i % len(reqs)]), timeout)
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as e:
                stats.error(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.05)
                continue
            i += 1
            if res.status != 200:
                stats.error(f"HTTP {res.status}: {res.head[:200]!r}")
            if count is not None or now >= measure_from:
                stats.requests += 1
                stats.statuses[res.status] = stats.statuses.get(res.status, 0) + 1
                stats.latencies.append(res.total_ns)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finished = time.monotonic()
    return finished - (start if count is not None else measure_from)


async def one_stream(target: Target, conn: ClientConn | None, req: bytes, stats: Stats, expect: int,
                     timeout: float) -> ClientConn | None:
    try:
        if conn is None or conn.closed:
            conn = await target.open(stats.delays)
        res = await asyncio.wait_for(conn.request(req, scan=True), timeout)
    except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as e:
        stats.error(f"{type(e).__name__}: {e}")
        if conn is not None:
            conn.close()
        return None
    stats.requests += 1
    stats.statuses[res.status] = stats.statuses.get(res.status, 0) + 1
    stats.events += res.stamps
    stats.ttfb.append(res.ttfb_ns)
    stats.latencies.append(res.total_ns)
    if res.status != 200:
        stats.error(f"HTTP {res.status}: {res.head[:200]!r}")
    elif expect and res.stamps != expect:
        stats.error(f"stream delivered {res.stamps} of {expect} stamped events")
    return conn


async def run_stream(spec: dict[str, Any], target: Target, stats: Stats) -> float:
    reqs = build_requests(spec)
    expect = int(spec.get("expect_events", 0))
    timeout = float(spec.get("timeout", 60))
    start = time.monotonic()

    async def worker(wid: int) -> None:
        conn = None
        for k in range(int(spec["streams"])):
            conn = await one_stream(target, conn, reqs[(wid + k) % len(reqs)], stats, expect, timeout)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker(w) for w in range(int(spec["concurrency"]))))
    return time.monotonic() - start


async def run_hold(spec: dict[str, Any], target: Target, stats: Stats) -> float:
    reqs = build_requests(spec)
    n = int(spec["concurrency"])
    ramp = float(spec.get("ramp", 5))
    expect = int(spec.get("expect_events", 0))
    timeout = float(spec.get("timeout", 120))
    start = time.monotonic()

    async def holder(k: int) -> None:
        await asyncio.sleep(ramp * k / n)
        conn = await one_stream(target, None, reqs[k % len(reqs)], stats, expect, timeout)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(holder(k) for k in range(n)))
    return time.monotonic() - start


def summarize(stats: Stats, elapsed: float, cpu: float) -> dict[str, Any]:
    ms = 1e-6
    out: dict[str, Any] = {
        "requests": stats.requests,
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "elapsed_s": elapsed,
        "rps": stats.requests / elapsed if elapsed > 0 else 0.0,
        "latency_ms": percentiles([v * ms for v in stats.latencies]),
        "loadgen_cpu_pct": 100 * cpu / elapsed if elapsed > 0 else 0.0,
    }
    if stats.ttfb:
        out["ttfb_ms"] = percentiles([v * ms for v in stats.ttfb])
    if stats.events or stats.delays:
        out["events"] = stats.events
        out["event_delay_ms"] = percentiles([v * ms for v in stats.delays])
        if stats.delays:  # one stream at a time (scenario 7): the mean is the per-event cost
            out["event_delay_ms"]["mean"] = sum(stats.delays) * ms / len(stats.delays)
    return rounded(out, 4)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target(spec["target"])
    stats = Stats()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    mode = spec["mode"]
    if mode == "blocking":
        elapsed = await run_blocking(spec, target, stats)
    elif mode == "stream":
        elapsed = await run_stream(spec, target, stats)
    elif mode == "hold":
        elapsed = await run_hold(spec, target, stats)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return summarize(stats, elapsed, cpu)


def main() -> None:
    spec = orjson.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
