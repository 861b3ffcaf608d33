"""Addon: raw request/response dumps for instances with a DUMP_DIR.

Every interception on such an instance writes

    <dump_dir>/<instance>/<started-at>-<interception-id>.req.txt
    <dump_dir>/<instance>/<started-at>-<interception-id>.resp.txt

(passthrough requests under `<dump_dir>/<instance>/passthrough/`): the HTTP
request as sent upstream and the response as received, credentials redacted
(see addons/sinks/redaction.py). Streamed bodies are appended chunk by chunk as they
pass, so the dump of a running or cut-off stream is readable at any time.

File I/O never happens on the event loop: the hooks only enqueue bytes and a
writer thread appends them (files 0600, directories 0700). A directory that
cannot be written produces one warning and is then skipped silently; the
request itself is never affected. If the disk falls behind by more than
MAX_PENDING bytes, dump data is dropped (and the dump says so) rather than
letting memory grow.

This addon must come after every addon that changes the request (routing,
credential injection, signing) so the dump shows what went upstream.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from mitmproxy import http

from addons.flow.state import FlowStates
from addons.settings.config import Settings
from addons.sinks import redaction

log = logging.getLogger("aigw.dumps")

MAX_PENDING = 64 * 1024 * 1024  # bytes queued for the writer thread before dumps start dropping data
MAX_OPEN_FILES = 128


def timestamp(dt: datetime) -> str:
    """`20260105T101530.123Z`: sortable, no characters that need quoting in a shell."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y%m%dT%H%M%S") + f".{dt.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- formatting


def _header_lines(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    out = []
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("utf-8", "surrogateescape")
        value = redaction.redact_header_value(name, value)
        out.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    return b"".join(out)


def format_request(request: http.Request, secrets: Iterable[str] = ()) -> bytes:
    head = f"{request.method} {redaction.redact_url(request.url)} {request.http_version}\r\n".encode()
    body = request.raw_content or b""
    if body and secrets:
        body = redaction.scrub_bytes(body, secrets)
    return head + _header_lines(request.headers.fields) + b"\r\n" + body


def format_response_head(response: http.Response) -> bytes:
    line = f"{response.http_version} {response.status_code} {response.reason}\r\n".encode()
    return line + _header_lines(response.headers.fields) + b"\r\n"


# --------------------------------------------------------------------------- writer thread


@dataclass(slots=True)
class _Op:
    kind: str  # "write" | "close" | "probe" | "stop"
    path: Path
    data: bytes = b""
    done: threading.Event | None = None
    label: str = ""  # the instance, for the warning


class DumpWriter:
    """Appends dump data on its own thread; `write`/`end` only enqueue."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._q: SimpleQueue[_Op] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._files: OrderedDict[Path, int] = OrderedDict()
        self._failed_dirs: set[Path] = set()
        self._max_pending = max_pending
        # Each counter is written by one thread only, so pending = queued - written needs no lock.
        self._queued = 0
        self._written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return self._queued - self._written

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aigw-dumps", daemon=True)
            self._thread.start()

    def write(self, path: Path, data: bytes) -> bool:
        """Queue `data` for appending to `path`; False if dropped because the writer fell behind."""
        if not data:
            return True
        if self.pending + len(data) > self._max_pending:
            self.dropped += len(data)
            return False
        self._queued += len(data)
        self._q.put(_Op("write", path, data))
        return True

    def end(self, path: Path, trailer: bytes = b"") -> None:
        self._q.put(_Op("close", path, trailer))

    def probe(self, directory: Path, label: str) -> None:
        """Check at startup that `directory` can be written (warns once if not)."""
        self._q.put(_Op("probe", directory, label=label))

    def flush(self, timeout: float = 10.0) -> bool:
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._q.put(_Op("flush", Path(), done=done))
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        thread = self._thread
        if thread is None:
            return
        done = threading.Event()
        self._q.put(_Op("stop", Path(), done=done))
        done.wait(timeout)
        thread.join(timeout=1)
        self._thread = None

    # -- thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            op = self._q.get()
            try:
                if op.kind == "write":
                    self._written += len(op.data)
                    self._append(op.path, op.data)
                elif op.kind == "close":
                    if op.data:
                        self._append(op.path, op.data)
                    self._close(op.path)
                elif op.kind == "probe":
                    self._probe(op.path, op.label)
                elif op.kind in ("flush", "stop"):
                    if op.kind == "stop":
                        for path in list(self._files):
                            self._close(path)
                    if op.done is not None:
                        op.done.set()
                    if op.kind == "stop":
                        return
            except Exception:  # never let the dump thread die
                log.exception("dump writer error")

    def _fd(self, path: Path) -> int | None:
        fd = self._files.get(path)
        if fd is not None:
            self._files.move_to_end(path)
            return fd
        directory = path.parent
        if directory in self._failed_dirs:
            return None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)  # a pre-existing file: tighten
        except OSError as e:
            self._unwritable(directory, e)
            return None
        self._files[path] = fd
        if len(self._files) > MAX_OPEN_FILES:  # many concurrent streams: reopen later, in append mode
            _, old = self._files.popitem(last=False)
            os.close(old)
        return fd

    def _append(self, path: Path, data: bytes) -> None:
        fd = self._fd(path)
        if fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            self._close(path)
            self._unwritable(path.parent, e)

    def _close(self, path: Path) -> None:
        fd = self._files.pop(path, None)
        if fd is not None:
            os.close(fd)

    def _probe(self, directory: Path, label: str) -> None:
        probe = directory / f".aigw-probe-{os.getpid()}"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as e:
            self._unwritable(directory, e, label)

    def _unwritable(self, directory: Path, error: OSError, label: str = "") -> None:
        if directory in self._failed_dirs:
            return
        self._failed_dirs.add(directory)
        who = f" for instance {label!r}" if label else ""
        log.warning("dump directory %s is not writable (%s): raw dumps%s are not written; requests are "
                    "unaffected", directory, error.strerror or error, who)


# --------------------------------------------------------------------------- addon


@dataclass(slots=True)
class _FlowDump:
    req: Path
    resp: Path
    head_written: bool = False
    streaming: bool = False
    ended: bool = False
    dropped: bool = False


class _Tee:
    """Wraps `flow.response.stream`: hands each chunk (and the final b"") to the dump, then relays it."""

    __slots__ = ("inner", "sink")

    def __init__(self, inner: Callable[[bytes], Any] | bool, sink: Callable[[bytes], None]) -> None:
        self.inner = inner
        self.sink = sink

    def __call__(self, chunk: bytes) -> Any:
        try:
            self.sink(chunk)
        except Exception:
            log.exception("dump tap failed")
        inner = self.inner
        return chunk if inner is True else inner(chunk)  # type: ignore[operator]


class Dumps:
    def __init__(self, settings: Settings, flows: FlowStates, writer: DumpWriter | None = None) -> None:
        self.settings = settings
        self.flows = flows
        self.writer = writer or DumpWriter()
        self.secrets = redaction.configured_secrets(settings)
        self.dumps: weakref.WeakKeyDictionary[http.HTTPFlow, _FlowDump] = weakref.WeakKeyDictionary()
        self.enabled = any(i.dump_dir is not None for i in settings.instances)

    def running(self) -> None:
        if not self.enabled:
            return
        self.writer.start()
        for instance in self.settings.instances:
            if instance.dump_dir is not None:
                self.writer.probe(instance.dump_dir / instance.name, instance.name)
                log.info("instance %r dumps raw requests and responses to %s", instance.name,
                         instance.dump_dir / instance.name)

    def done(self) -> None:
        self.writer.close()

    # -- per flow ----------------------------------------------------------------

    def dump_for(self, flow: http.HTTPFlow) -> _FlowDump | None:
        if not self.enabled:
            return None
        found = self.dumps.get(flow)
        if found is not None:
            return found
        ctx = self.flows.get(flow)
        if ctx is None or ctx.instance.dump_dir is None:
            return None
        base = ctx.instance.dump_dir / ctx.instance.name
        if ctx.interception is not None:
            stem = f"{timestamp(ctx.interception.started_at)}-{ctx.interception.id}"
        else:
            base = base / "passthrough"
            stem = f"{timestamp(ctx.received_at)}-{flow.id}"
        dump = self.dumps[flow] = _FlowDump(req=base / f"{stem}.req.txt", resp=base / f"{stem}.resp.txt")
        self.write_request(flow, dump)
        return dump

    def write_request(self, flow: http.HTTPFlow, dump: _FlowDump) -> None:
        secrets = set(self.secrets) | redaction.credential_values(flow.request.headers.items(multi=True))
        self.writer.write(dump.req, format_request(flow.request, secrets))
        self.writer.end(dump.req)

    def append(self, dump: _FlowDump, data: bytes) -> None:
        if dump.ended or not data:
            return
        if not self.writer.write(dump.resp, data):
            dump.dropped = True

    def finish(self, dump: _FlowDump, note: str | None = None) -> None:
        if dump.ended:
            return
        dump.ended = True
        trailer = b""
        if dump.dropped:
            trailer += b"\r\n[aigw: part of this body was not dumped: the dump writer fell behind]\r\n"
        if note:
            trailer += f"\r\n[aigw: {note}]\r\n".encode()
        self.writer.end(dump.resp, trailer)

    # -- hooks -------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        # Last in the chain: the request is what goes upstream (or what the gateway answered itself).
        self.dump_for(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        dump = self.dump_for(flow)
        if dump is None or flow.response is None:
            return
        self.append(dump, format_response_head(flow.response))
        dump.head_written = True
        stream = flow.response.stream
        if stream:
            dump.streaming = True
            flow.response.stream = _Tee(stream, lambda chunk: self.on_chunk(dump, chunk))

    def on_chunk(self, dump: _FlowDump, chunk: bytes) -> None:
        if chunk:
            self.append(dump, chunk)
        else:
            self.finish(dump)  # end of stream

    def response(self, flow: http.HTTPFlow) -> None:
        dump = self.dump_for(flow)
        if dump is None or flow.response is None:
            return
        if not dump.head_written:
            self.append(dump, format_response_head(flow.response))
            dump.head_written = True
        if not dump.streaming:
            self.append(dump, flow.response.raw_content or b"")
        self.finish(dump)

    def error(self, flow: http.HTTPFlow) -> None:
        dump = self.dump_for(flow)
        if dump is None:
            return
        message = flow.error.msg if flow.error else "unknown error"
        if not dump.head_written:
            self.finish(dump, f"no response: {message}")
        else:
            self.finish(dump, f"response ended early: {message}")
