"""`aigw serve --workers N`: N gateway processes on one listener, one of them owning the database.

The process started by `aigw serve` is worker 0, the *primary*: a full gateway as with one worker,
which also owns the DuckDB file (the recorder), the admin API, `/metrics` and the runtime file. It
starts workers 1…N-1 (`child_main`), each a full mitmproxy engine with aigw's addons, restarts one
that dies, and forwards SIGTERM/SIGINT to them.

Every process binds the listener with SO_REUSEPORT (`SharedPortLoop`): the kernel spreads new
connections over the processes by their address hash, which balances far better than processes
racing to accept on one inherited socket.

Primary and workers talk over one unix socket (in a private 0700 directory), length-prefixed frames:

- worker → primary: records (the spool's JSON lines, `addons/store/spool.py`, batched over
  `FLUSH_DELAY`), admin API requests (forwarded whole, answered by the primary's AdminApi), keys' last-used
  times, a snapshot of the worker's metrics (every second), goodbye;
- primary → worker: state (admin token, keys, governance policy, period spend, why recording
  fails) at start and on every change (checked every 0.2 s), admin API answers.

Back-pressure: a worker whose unsent records exceed `HIGH_WATER` bytes answers new requests 503
(overloaded) until the primary catches up; memory stays bounded. A worker that loses the primary
shuts down gracefully. When a worker's connection ends, the primary ends the interceptions it had
left open (status failed), then starts a new worker in its place.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from mitmproxy import connection, http
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from addons.chain.auth import KeyCache
from addons.chain.routing import RESERVED, is_gateway_request, json_response, split_gateway_path
from addons.flow.records import InterceptionEnd, InterceptionStart, Record, TokenUsageRecord
from addons.providers.base import any_error
from addons.settings.config import Settings
from addons.sinks import metrics
from addons.store.spool import decode_record, encode_record

log = logging.getLogger("aigw.workers")

HEADER = struct.Struct("!cI")  # kind, payload length
HIGH_WATER = 32 * 1024 * 1024  # unsent record bytes in a worker before it refuses new requests
# A worker sends its records at most this often: each frame wakes the primary's reader thread, which then
# takes the GIL from the primary's event loop; fewer, larger frames keep that handoff rare.
FLUSH_DELAY = 0.01
STATE_INTERVAL = 0.2  # seconds between the primary's checks for changed keys and policy
SPEND_INTERVAL = 1.0
REPORT_INTERVAL = 1.0  # seconds between a worker's metrics snapshots and last-used reports
RESTART_DELAY = 1.0  # at least this long between two starts of the same worker
ADMIN_TIMEOUT = 600.0
CRASHED = "worker {} stopped before the interception ended"
# Gauges where the sum of the workers' values means nothing: the largest one is served.
_MAX_FAMILIES = {metrics.PREFIX + "circuit_breaker_state", metrics.PREFIX + "build_info"}

# Frame kinds.
RECORDS, HELLO, ADMIN, TOUCH, METRICS, BYE = b"R", b"H", b"A", b"T", b"M", b"B"  # worker → primary
STATE, ANSWER = b"S", b"a"  # primary → worker


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


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


# -- metrics -------------------------------------------------------------------------------------

type Snapshot = list[tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]]


def snapshot(registry: Any = metrics.REGISTRY) -> Snapshot:
    """The gateway's own metric families (not the process collectors: those are per process)."""
    return [(f.name, f.type, f.documentation, f.unit, [(s.name, s.labels, s.value) for s in f.samples])
            for f in registry.collect() if f.name.startswith(metrics.PREFIX)]


class SummedMetrics:
    """A collector serving the primary's metrics plus every worker's last snapshot, summed per series.

    A worker that ended leaves its counters behind (`retired`), so a restart never makes a counter
    of the whole gateway go down."""

    def __init__(self) -> None:
        self.workers: dict[int, Snapshot] = {}
        self.retired: Snapshot = []
        self.lock = threading.Lock()

    def update(self, worker: int, snap: Snapshot) -> None:
        with self.lock:
            self.workers[worker] = snap

    def retire(self, worker: int) -> None:
        with self.lock:
            snap = self.workers.pop(worker, None)
            if snap:
                kept = [(n, t, d, u, [s for s in samples if not s[0].endswith("_created")])
                        for n, t, d, u, samples in snap if t in ("counter", "histogram", "summary")]
                self.retired = _merged([self.retired, kept])

    def collect(self) -> Any:
        with self.lock:
            parts = [list(metrics.REGISTRY.collect()), *self.workers.values(), self.retired]
        own = [(f.name, f.type, f.documentation, f.unit, [(s.name, s.labels, s.value) for s in f.samples])
               for f in parts[0]]
        for name, kind, doc, unit, samples in _merged([own, *parts[1:]]):
            metric = Metric(name, doc, kind, unit)
            for sample_name, labels, value in samples:
                metric.add_sample(sample_name, labels, value)
            yield metric


def _merged(snapshots: list[Snapshot]) -> Snapshot:
    families: dict[str, tuple[str, str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for snap in snapshots:
        for name, kind, doc, unit, samples in snap:
            values = families.setdefault(name, (kind, doc, unit, {}))[3]
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                old = values.get(key)
                if old is None:
                    values[key] = value
                elif sample_name.endswith("_created"):
                    values[key] = min(old, value)
                elif name in _MAX_FAMILIES:
                    values[key] = max(old, value)
                else:
                    values[key] = old + value
    return [(name, kind, doc, unit, [(s, dict(labels), v) for (s, labels), v in values.items()])
            for name, (kind, doc, unit, values) in families.items()]


# -- primary ----------------------------------------------------------------------------------------


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


class Supervisor:
    """In the primary: starts and restarts the workers, takes their records and answers their calls."""

    def __init__(self, settings: Settings, sets: list[str], quiet: bool, recorder: Any, keys: KeyCache) -> None:
        self.settings = settings
        self.sets = sets
        self.quiet = quiet
        self.recorder = recorder
        self.keys = keys
        self.metrics = SummedMetrics()
        self.directory = Path(tempfile.mkdtemp(prefix="aigw-workers-"))  # 0700
        self.path = self.directory / "channel.sock"
        self.listener: socket.socket | None = None
        self.peers: dict[int, _Peer] = {}
        self.threads: list[threading.Thread] = []
        self.processes: dict[int, Any] = {}
        self.stopping = False
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.admin: Any = None
        self.governance: Any = None
        self.sent: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None
        self.mp = multiprocessing.get_context("spawn")

    def registry(self) -> CollectorRegistry:
        """What `/metrics` serves: the primary's metrics and every worker's, summed."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.metrics)  # type: ignore[arg-type]
        return registry

    # -- lifecycle (primary's event loop) ---------------------------------------------------

    def start(self, admin: Any, governance: Any) -> None:
        """Listen on the channel, start the workers and the state broadcast (on the primary's loop)."""
        self.loop = asyncio.get_running_loop()
        self.admin, self.governance = admin, governance
        listener = self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._thread(self._accept, "aigw-workers-accept")
        for worker in range(1, self.settings.workers):
            self._spawn(worker)
        self._thread(self._watch, "aigw-workers-watch")
        self.task = self.loop.create_task(self._broadcast())

    def signal(self, signum: int) -> None:
        """Pass a stop signal on to every worker (they drain on their own)."""
        with self.lock:  # no worker is started after this
            self.stopping = True
            processes = list(self.processes.values())
        for process in processes:
            if process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    def close(self, timeout: float) -> None:
        """Wait for the workers to end (they were signalled), then for their last records to be taken.

        Called after the primary's master stopped, before its recorder flushes."""
        with self.lock:
            self.stopping = True
            processes = list(self.processes.values())
        if self.task is not None:
            self.task.cancel()
        deadline = time.monotonic() + timeout
        for process in processes:
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker (pid %s) did not stop in time: killing it", process.pid)
                process.kill()
                process.join(5)
        for thread in list(self.threads):
            if thread.name.startswith("aigw-worker-"):
                thread.join(max(0.1, deadline - time.monotonic()))
        if self.listener is not None:
            self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _thread(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _spawn(self, worker: int) -> None:
        process = self.mp.Process(target=child_main, name=f"aigw-worker-{worker}",
                                  args=(self.settings, self.sets, worker, str(self.path), self.quiet))
        process.start()
        self.processes[worker] = process
        log.info("started worker %d (pid %s)", worker, process.pid)

    def _watch(self) -> None:
        """Restart a worker that exits while the gateway is not stopping."""
        started = {w: time.monotonic() for w in self.processes}
        while not self.stopping:
            sentinels = {p.sentinel: w for w, p in self.processes.items()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                worker = sentinels[sentinel]
                process = self.processes[worker]
                process.join(1)  # the sentinel fires as the process exits; reap it
                if self.stopping:
                    return
                log.error("worker %d (pid %s) exited with code %s: starting a new one", worker, process.pid,
                          process.exitcode)
                time.sleep(max(0.0, started[worker] + RESTART_DELAY - time.monotonic()))
                with self.lock:
                    if self.stopping:
                        return
                    self._spawn(worker)
                started[worker] = time.monotonic()

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
            while True:
                header = stream.read(HEADER.size)
                if len(header) < HEADER.size:
                    break
                kind, size = HEADER.unpack(header)
                payload = stream.read(size)
                if len(payload) < size:
                    break
                self._handle(peer, kind, payload)
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
        if not peer.said_bye and not self.stopping:
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
        try:
            flow = admin_flow(request, self.settings.listen_port)
            await self.admin.request(flow)
            if flow.response is None:
                raise RuntimeError("the admin API did not answer")
            answer = (flow.response.status_code, flow.response.content or b"")
        except Exception:
            log.exception("forwarded admin API call failed")
            answer = (500, any_error("internal error", "api_error"))
        peer.send(ANSWER, pickle.dumps((request_id, *answer)))

    def _touch(self, used: dict[str, datetime]) -> None:
        for key_id, at in used.items():
            if at > self.keys.last_used.get(key_id, at):
                self.keys.last_used[key_id] = at
            else:
                self.keys.last_used.setdefault(key_id, at)


def admin_flow(request: dict[str, Any], port: int) -> http.HTTPFlow:
    """A flow for the primary's AdminApi from a request a worker received (origin form, to the listener)."""
    now = time.time()
    client = connection.Client(peername=tuple(request["peer"]), sockname=("127.0.0.1", port), timestamp_start=now)
    flow = http.HTTPFlow(client, connection.Server(address=None))
    flow.request = http.Request("127.0.0.1", port, request["method"], b"http", b"", request["path"], b"HTTP/1.1",
                                http.Headers(request["headers"]), request["content"], None, now, now)
    return flow


# -- worker --------------------------------------------------------------------------------------


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
        kind, payload = await self._read()
        if kind != STATE:
            raise ConnectionError(f"unexpected first frame {kind!r} from the primary")
        self.state = pickle.loads(payload)
        return self.state

    def attach(self, keys: KeyCache, governance: Any, on_lost: Callable[[], None]) -> None:
        self.keys, self.governance, self.on_lost = keys, governance, on_lost
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._listen()), loop.create_task(self._report())]

    async def _read(self) -> tuple[bytes, bytes]:
        assert self.reader is not None
        header = await self.reader.readexactly(HEADER.size)
        kind, size = HEADER.unpack(header)
        return kind, await self.reader.readexactly(size)

    async def _listen(self) -> None:
        try:
            while True:
                kind, payload = await self._read()
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
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:
                log.exception("record sink failed")

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
        from addons.chain.admin import from_this_machine

        if self.lost or self.stream is None:
            return 503, any_error("the gateway is shutting down", "api_error", "overloaded_error")
        request_id = next(self.ids)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.answers[request_id] = future
        # The peer only says whether the caller is on this machine (the local admin token's rule).
        peer = ("127.0.0.1", 0) if from_this_machine(flow) else ("192.0.2.1", 0)
        request = {"method": flow.request.data.method, "path": flow.request.data.path,
                   "headers": flow.request.headers.fields, "content": flow.request.content, "peer": peer}
        self._send(ADMIN, pickle.dumps((request_id, request)))
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
        if parts is None or parts[0] not in RESERVED:
            return
        status, content = await self.link.admin(flow)
        flow.response = json_response(status, content)


def child_main(settings: Settings, sets: list[str], worker: int, path: str, quiet: bool) -> None:
    """A worker process (multiprocessing spawn target): a gateway that records through the primary."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the primary only, which passes it on once
    from addons.app.serve import run_worker

    raise SystemExit(run_worker(settings, sets, worker, path, quiet))
