"""A worker's end of the channel: the recorder its addons record through, the state the primary sends it,
back-pressure while the primary has not taken its records, and its admin API calls forwarded."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from addons.app.workers.admin import forwarded_request
from addons.app.workers.prometheus import snapshot
from addons.app.workers.protocol import (
    ADMIN,
    ANSWER,
    BYE,
    HELLO,
    METRICS,
    RECORDS,
    STATE,
    TOUCH,
    frame,
    read_frame_async,
)
from addons.chain.auth import KeyCache
from addons.chain.routing import is_gateway_request, split_gateway_path
from addons.flow.records import InterceptionStart, Record
from addons.providers.errors import any_error, json_response
from addons.settings.instances import RESERVED_NAMES
from addons.sinks.recorder import fan_out
from addons.store.spool import encode_record

log = logging.getLogger("aigw.workers")

HIGH_WATER = 32 * 1024 * 1024  # unsent record bytes in a worker before it refuses new requests
# A worker sends its records at most this often: each frame wakes the primary's reader thread, which then
# takes the GIL from the primary's event loop; fewer, larger frames keep that handoff rare.
FLUSH_DELAY = 0.01
REPORT_INTERVAL = 1.0  # seconds between a worker's metrics snapshots and last-used reports
ADMIN_TIMEOUT = 600.0


class WorkerLink:
    """In a worker: the channel to the primary, and the recorder the addons record through.

    Named `recorder` like the primary's Recorder: `/readyz` asks it why recording fails."""

    name = "recorder"

    def __init__(self, worker: int, path: str) -> None:
        self.worker = worker
        self.path = path
        self.sinks: list[Callable[[Record], None]] = []
        self.writer = None  # no database here
        self.reader: asyncio.StreamReader | None = None
        self.stream: asyncio.StreamWriter | None = None
        self.buffer: list[bytes] = []
        self.flush_scheduled = False
        self.state: dict[str, Any] = {}
        self.answers: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.ids = itertools.count()
        self.lost = False
        self.dropped = 0
        self.keys: KeyCache | None = None
        self.governance: Any = None
        self.on_lost: Callable[[], None] | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> dict[str, Any]:
        """Connect and say hello; returns the primary's state (token, keys, policy, spend)."""
        self.reader, self.stream = await asyncio.open_unix_connection(self.path)
        self.stream.write(frame(HELLO, pickle.dumps({"worker": self.worker, "pid": os.getpid()})))
        kind, payload = await read_frame_async(self.reader)
        if kind != STATE:
            raise ConnectionError(f"unexpected first frame {kind!r} from the primary")
        self.state = pickle.loads(payload)
        return self.state

    def attach(self, keys: KeyCache, governance: Any, on_lost: Callable[[], None]) -> None:
        self.keys, self.governance, self.on_lost = keys, governance, on_lost
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._listen()), loop.create_task(self._report())]

    async def _listen(self) -> None:
        assert self.reader is not None
        try:
            while True:
                kind, payload = await read_frame_async(self.reader)
                if kind == STATE:
                    self.apply(pickle.loads(payload))
                elif kind == ANSWER:
                    request_id, status, content = pickle.loads(payload)
                    future = self.answers.pop(request_id, None)
                    if future is not None and not future.done():
                        future.set_result((status, content))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        self.lost = True
        for future in self.answers.values():
            if not future.done():
                future.set_result((503, any_error("the gateway is shutting down", "api_error", "overloaded_error")))
        log.error("worker %d lost the primary process: shutting down", self.worker)
        if self.on_lost is not None:
            self.on_lost()

    def apply(self, changed: dict[str, Any]) -> None:
        self.state.update(changed)
        if "keys" in changed and self.keys is not None:
            self.keys.replace(changed["keys"])
        if self.governance is not None:
            if "policy" in changed:
                self.governance.replace_policy(changed["policy"])
            if "spend" in changed:
                self.governance.spend.clear()
                self.governance.spend.update(changed["spend"])

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.report()

    def report(self) -> None:
        if self.keys is not None and (used := self.keys.take_last_used()):
            self._send(TOUCH, pickle.dumps(used))
        self._send(METRICS, pickle.dumps(snapshot()))

    # -- recording -------------------------------------------------------------------------------

    def record(self, record: Record) -> None:
        if type(record) is InterceptionStart:
            record.metadata["worker"] = self.worker  # type: ignore[union-attr]
        self.buffer.append(encode_record(record))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
        fan_out(self.sinks, record)

    def flush(self) -> None:
        """One frame with every record since the last one."""
        self.flush_scheduled = False
        if self.buffer:
            data, self.buffer = b"".join(self.buffer), []
            if not self._send(RECORDS, data):
                self.dropped += data.count(b"\n")
                log.error("worker %d: %d record(s) lost: the primary process is gone", self.worker, self.dropped)

    def _send(self, kind: bytes, payload: bytes) -> bool:
        if self.stream is None or self.lost or self.stream.is_closing():
            return False
        self.stream.write(frame(kind, payload))
        return True

    def congested(self) -> bool:
        stream = self.stream
        return stream is not None and stream.transport.get_write_buffer_size() > HIGH_WATER

    def failing(self) -> str | None:
        if self.lost:
            return "this worker lost the process that owns the database"
        if self.congested():
            return "records wait for the database process"
        failing = self.state.get("failing")
        return str(failing) if failing else None

    async def close(self) -> None:
        """Send the last records and say goodbye (after the worker's master stopped)."""
        for task in self.tasks:
            task.cancel()
        self.flush()
        self.report()
        if self.stream is not None and not self.lost:
            self._send(BYE, b"")
            try:
                await asyncio.wait_for(self.stream.drain(), 30)
                self.stream.close()
                await asyncio.wait_for(self.stream.wait_closed(), 5)
            except (OSError, TimeoutError):
                log.error("worker %d could not hand its last records to the primary", self.worker)

    # -- mitmproxy hooks ---------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Back-pressure: refuse new requests while the primary has not taken this worker's records."""
        if flow.response is None and self.congested():
            flow.response = http.Response.make(
                503, any_error("the gateway is overloaded (records wait for the database)", "api_error",
                               "overloaded_error"),
                {"content-type": "application/json", "retry-after": "1"})

    async def admin(self, flow: http.HTTPFlow) -> tuple[int, bytes]:
        if self.lost or self.stream is None:
            return 503, any_error("the gateway is shutting down", "api_error", "overloaded_error")
        request_id = next(self.ids)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.answers[request_id] = future
        self._send(ADMIN, pickle.dumps((request_id, forwarded_request(flow))))
        try:
            return await asyncio.wait_for(future, ADMIN_TIMEOUT)
        except TimeoutError:
            self.answers.pop(request_id, None)
            return 504, any_error("the database process did not answer in time", "api_error")


class ForwardAdmin:
    """Addon in a worker, in the AdminApi's place: its routes are answered by the primary."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not is_gateway_request(flow):
            return
        parts = split_gateway_path(flow.request.path)
        if parts is None or parts[0] not in RESERVED_NAMES:
            return
        status, content = await self.link.admin(flow)
        flow.response = json_response(status, content)
