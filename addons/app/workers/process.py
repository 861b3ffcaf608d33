"""What each process of `aigw serve --workers N` sets up for itself: the shared listener, its log tag and its
OpenTelemetry resource."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from addons.settings.config import Settings


class SharedPortLoop(asyncio.SelectorEventLoop):
    """An event loop that binds the gateway's listener with SO_REUSEPORT, so several processes accept
    on it. mitmproxy binds with `asyncio.start_server(handler, host, port)` and offers no hook for
    socket options; the loop is where that call lands."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.shared_port = port

    async def create_server(self, protocol_factory: Any, host: Any = None, port: Any = None,
                            **kwargs: Any) -> asyncio.Server:
        if port == self.shared_port and kwargs.get("sock") is None:
            kwargs["reuse_port"] = True
        return await super().create_server(protocol_factory, host, port, **kwargs)


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    return (lambda: SharedPortLoop(settings.listen_port)) if settings.workers > 1 else None


def tag_logs(handler: logging.Handler, worker: int) -> None:
    """Every log line of this process names its worker (`worker=N`): all processes write one stream."""
    def tag(record: logging.LogRecord) -> bool:
        record.worker = worker
        return True

    handler.addFilter(tag)


def name_otel_resource(worker: int) -> None:
    """Every process exports its own OpenTelemetry metrics: an `aigw.worker` resource attribute keeps their
    series apart (the last value in OTEL_RESOURCE_ATTRIBUTES wins, so a worker's overrides the primary's)."""
    current = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    os.environ["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(filter(None, [current, f"aigw.worker={worker}"]))
