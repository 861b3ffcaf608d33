"""The primary's end of the workers' channel: takes their records, answers their admin calls, keeps their
state current, and ends what a worker left open when its connection ends."""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from addons.app.workers import admin as forwarded
from addons.app.workers.prometheus import SummedMetrics
from addons.app.workers.protocol import ADMIN, ANSWER, BYE, HELLO, METRICS, RECORDS, STATE, TOUCH, frame, read_frame
from addons.chain.auth import KeyCache
from addons.flow.records import InterceptionEnd, InterceptionStart, Record, TokenUsageRecord
from addons.settings.config import Settings
from addons.store.spool import decode_record

log = logging.getLogger("aigw.workers")

STATE_INTERVAL = 0.2  # seconds between the primary's checks for changed keys and policy
SPEND_INTERVAL = 1.0
CRASHED = "worker {} stopped before the interception ended"


@dataclass(slots=True)
class _Peer:
    """One worker's connection, seen from the primary."""

    sock: socket.socket
    worker: int = -1
    open: set[str] = field(default_factory=set)  # interceptions started and not ended
    outbox: SimpleQueue[bytes | None] = field(default_factory=SimpleQueue)
    said_bye: bool = False

    def send(self, kind: bytes, payload: bytes) -> None:
        self.outbox.put(frame(kind, payload))

    def pump(self) -> None:
        """Sender thread: a slow worker never blocks the primary's event loop."""
        while (data := self.outbox.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                return


class Hub:
    """In the primary: one reader and one sender thread per worker connection; what needs the primary's
    state (recorder, keys, governance, admin API) runs on its event loop."""

    def __init__(self, settings: Settings, recorder: Any, keys: KeyCache, metrics: SummedMetrics, path: Path,
                 stopping: Callable[[], bool]) -> None:
        self.settings = settings
        self.recorder = recorder
        self.keys = keys
        self.metrics = metrics
        self.path = path
        self.stopping = stopping
        self.listener: socket.socket | None = None
        self.peers: dict[int, _Peer] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.admin: Any = None
        self.governance: Any = None
        self.sent: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self, admin: Any, governance: Any) -> None:
        """Listen on the channel and start the state broadcast (on the primary's loop)."""
        self.loop = asyncio.get_running_loop()
        self.admin, self.governance = admin, governance
        listener = self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._thread(self._accept, "aigw-workers-accept")
        self.task = self.loop.create_task(self._broadcast())

    def stop_broadcast(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def close(self, deadline: float) -> None:
        """Wait (until `deadline`, monotonic) for the workers' connections to be read to their end."""
        for thread in list(self.threads):
            if thread.name.startswith("aigw-worker-"):
                thread.join(max(0.1, deadline - time.monotonic()))
        if self.listener is not None:
            self.listener.close()

    def _thread(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    # -- channel (threads) ---------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        for n in itertools.count():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            peer = _Peer(sock)
            self._thread(self._serve_peer, f"aigw-worker-{n}", peer)
            self._thread(peer.pump, f"aigw-worker-send-{n}")

    def _serve_peer(self, peer: _Peer) -> None:
        stream = peer.sock.makefile("rb")
        try:
            while (received := read_frame(stream)) is not None:
                self._handle(peer, *received)
        except OSError:
            pass
        except Exception:
            log.exception("worker channel failed")
        finally:
            self._ended(peer)
            stream.close()

    def _handle(self, peer: _Peer, kind: bytes, payload: bytes) -> None:
        if kind == RECORDS:
            self._records(peer, payload)
        elif kind == HELLO:
            hello = pickle.loads(payload)
            peer.worker = int(hello["worker"])
            with self.lock:
                self.peers[peer.worker] = peer
            self._on_loop(lambda: peer.send(STATE, pickle.dumps(self._state())))
        elif kind == ADMIN:
            request_id, request = pickle.loads(payload)
            self._on_loop(lambda: self.loop.create_task(self._answer(peer, request_id, request)))  # type: ignore[union-attr]
        elif kind == TOUCH:
            used = pickle.loads(payload)
            self._on_loop(lambda: self._touch(used))
        elif kind == METRICS:
            self.metrics.update(peer.worker, pickle.loads(payload))
        elif kind == BYE:
            peer.said_bye = True

    def _records(self, peer: _Peer, payload: bytes) -> None:
        writer = self.recorder.writer
        counted: list[Record] = []
        for line in payload.splitlines(keepends=True):
            record = decode_record(line)
            if record is None:
                continue
            kind = type(record)
            if kind is InterceptionStart:
                peer.open.add(record.id)  # type: ignore[union-attr]
                counted.append(record)
            elif kind is InterceptionEnd:
                peer.open.discard(record.id)  # type: ignore[union-attr]
                counted.append(record)
            elif kind is TokenUsageRecord:
                counted.append(record)
            writer.submit(record)
        if counted and self.governance is not None:
            # The primary's spend ledger sees every worker's tokens; it is sent back to all of them.
            self._on_loop(lambda: [self.governance(r) for r in counted])

    def _ended(self, peer: _Peer) -> None:
        peer.outbox.put(None)
        with self.lock:
            if self.peers.get(peer.worker) is peer:
                del self.peers[peer.worker]
        if peer.open:
            now = datetime.now(UTC)
            error = CRASHED.format(peer.worker)
            log.warning("worker %d ended with %d interception(s) open: recording them as failed", peer.worker,
                        len(peer.open))
            for interception_id in peer.open:
                end = InterceptionEnd(interception_id, now, "failed", {"error": error})
                self.recorder.writer.submit(end)
                if self.governance is not None:
                    self._on_loop(lambda end=end: self.governance(end))
        if not peer.said_bye and not self.stopping():
            log.error("lost worker %d", peer.worker)
        self.metrics.retire(peer.worker)
        try:
            peer.sock.close()
        except OSError:
            pass

    def _on_loop(self, fn: Callable[[], Any]) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass  # the loop closed meanwhile (shutting down)

    # -- on the primary's loop -------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = {"token": self.keys.admin_token, "keys": self.keys.entries(), "failing": self.recorder.failing()}
        if self.governance is not None:
            state["policy"] = self.governance.policy
            state["spend"] = dict(self.governance.spend)
        return state

    async def _broadcast(self) -> None:
        """Send what changed to every worker: keys and policy within STATE_INTERVAL, spend every second."""
        last_spend = 0.0
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            state = self._state()
            changed = {}
            for name in ("keys", "policy", "failing"):
                if name in state and state[name] is not self.sent.get(name, object()) and \
                        (name != "failing" or state[name] != self.sent.get(name)):
                    changed[name] = state[name]
            now = time.monotonic()
            if "spend" in state and now - last_spend >= SPEND_INTERVAL and state["spend"] != self.sent.get("spend"):
                changed["spend"] = state["spend"]
                last_spend = now
            if not changed:
                continue
            self.sent.update(changed)
            payload = pickle.dumps(changed)
            with self.lock:
                peers = list(self.peers.values())
            for peer in peers:
                peer.send(STATE, payload)

    async def _answer(self, peer: _Peer, request_id: int, request: dict[str, Any]) -> None:
        status, content = await forwarded.answer(self.admin, request, self.settings.listen_port)
        peer.send(ANSWER, pickle.dumps((request_id, status, content)))

    def _touch(self, used: dict[str, datetime]) -> None:
        for key_id, at in used.items():
            if at > self.keys.last_used.get(key_id, at):
                self.keys.last_used[key_id] = at
            else:
                self.keys.last_used.setdefault(key_id, at)
