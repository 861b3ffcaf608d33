"""Small helpers shared by the harness processes (no third-party imports)."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Sequence
from typing import Any

# The fake upstream embeds its send time (time.monotonic_ns(), system-wide on Linux) in
# every content event as `@T<ns>@`; the load generator subtracts it from its read time.
STAMP_PREFIX = b"@T"
STAMP_RE = rb"@T(\d+)@"


def no_delay(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """The transport, with Nagle off: every SSE event and small response leaves at once."""
    assert isinstance(transport, asyncio.Transport)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return transport


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles plus max; None for an empty sample."""
    out: dict[str, float | None] = {}
    if not values:
        for p in points:
            out[f"p{p:g}"] = None
        out["max"] = None
        return out
    ordered = sorted(values)
    n = len(ordered)
    for p in points:
        rank = max(1, math.ceil(p / 100 * n))
        out[f"p{p:g}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


def rounded(value: Any, digits: int = 3) -> Any:
    """Round floats inside nested dicts/lists for compact JSON."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value
