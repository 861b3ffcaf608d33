"""The DuckDB writer: one thread owns a cursor and appends records in batches.

`submit()` is called from the proxy's event loop and only puts the record on
a queue. The writer thread collects records for up to `flush_interval`
seconds (or `max_batch` records) and writes the whole batch in one
transaction: planned by addons/store/batch.py (rows and thread links), written
by addons/store/commit.py (SQL in addons/store/bulk.py).

When the database fails (disk full, I/O error, invalidated), batches go to the
spool (addons/store/spool.py) instead, in order; the writer retries with
backoff, reopens the database if DuckDB invalidated it, and replays the spool
oldest first before it writes anything new. A record the database refuses
(a bug) is dropped alone, with an ERROR log and the dropped-records count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

import duckdb

from addons.flow.records import Record
from addons.pricing import Price
from addons.store import spool as spooling
from addons.store.batch import BatchPlanner
from addons.store.commit import Committer
from addons.store.recovery import recover_open_interceptions
from addons.store.spool import RETRY_MAX, Outage, Spool, needs_reopen
from addons.store.threads import THREAD_MAP_SIZE

log = logging.getLogger("aigw.store")

T = TypeVar("T")


# Control items travel through the same queue as records, so they are ordered with them.
class _Control:
    __slots__ = ()


class _Flush(_Control):
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Call(_Control):
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _Stop(_Control):
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class RecordWriter:
    """Owns one cursor on a dedicated thread and appends records in batches."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        flush_interval: float = 0.25,
        max_batch: int = 5000,
        price: Price | None = None,
        thread_map_size: int = THREAD_MAP_SIZE,
        spool: Spool | None = None,
        reopen: Callable[[], duckdb.DuckDBPyConnection] | None = None,
        recover_before: datetime | None = None,
        replica: str | None = None,
        retry_max: float = RETRY_MAX,
    ) -> None:
        """`spool`: where batches wait while the database fails (without one they are dropped, logged).
        `reopen`: closes the connection and opens the database again (after DuckDB invalidated it).
        `recover_before`: once the spool is replayed, end what was left open by a run that started
        before this time (a crash). `price`: the cost of a token row (addons/pricing)."""
        self._conn = conn
        self._interval = flush_interval
        self._max_batch = max(1, max_batch)
        self._q: SimpleQueue[Any] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._warned_closed = False
        self.outage = Outage(spool, retry_max)  # failures, spool, drops (metrics hook in here)
        self._reopen = reopen
        self._recover_before = recover_before
        # On a lake shared by replicas: stamped on each interception, so that a restart ends only its own.
        self.replica = replica
        self._planner = BatchPlanner(price, map_size=thread_map_size, replica=replica)
        self._commit = Committer(self._planner, self.outage)  # owns the writer thread's cursor

    # -- public API ---------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._commit.use(self._conn.cursor())
            self._thread = threading.Thread(target=self._run, name="aigw-db-writer", daemon=True)
            self._thread.start()

    def submit(self, record: Record) -> None:
        if self._closed:
            if not self._warned_closed:
                self._warned_closed = True
                log.warning("record writer is closed; dropping %s and later records", type(record).__name__)
            return
        self._q.put(record)

    def flush(self, timeout: float = 10.0) -> bool:
        if self._on_writer_thread():
            return False  # would wait for itself
        if not self._running():
            return self._q.empty()
        marker = _Flush()
        self._q.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is None:
                if self._q.empty():
                    return
                # Never started but holds records: start only to drain them.
                self._commit.use(self._conn.cursor())
                thread = self._thread = threading.Thread(target=self._run, name="aigw-db-writer", daemon=True)
                thread.start()
        stop = _Stop()
        self._q.put(stop)
        if not stop.done.wait(timeout):
            log.error("record writer did not drain within %.1fs; %d items still queued", timeout, self.queue_depth)
            return
        thread.join(timeout=5)

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float = 30.0) -> T:
        """Run `fn(cursor)` on the writer thread, after every record submitted before."""
        if self._on_writer_thread():
            assert self._commit.cur is not None
            return fn(self._commit.cur)
        if not self._running():
            raise RuntimeError("record writer is not running")
        item = _Call(fn)
        self._q.put(item)
        if not item.done.wait(timeout):
            raise TimeoutError(f"database call did not finish within {timeout:.1f}s")
        if item.error is not None:
            raise item.error
        return item.result

    @property
    def queue_depth(self) -> int:
        return self._q.qsize()

    @property
    def rows_written(self) -> int:
        """Records committed (an interception's start and end count as two)."""
        return self._commit.rows_written

    @property
    def last_flush_seconds(self) -> float:
        return self._commit.last_flush_seconds

    @property
    def batches(self) -> int:
        return self._commit.batches

    @property
    def on_batch(self) -> Callable[[int, float], None] | None:
        """Called on the writer thread after each committed batch, with its records and seconds."""
        return self._commit.on_batch

    @on_batch.setter
    def on_batch(self, hook: Callable[[int, float], None] | None) -> None:
        self._commit.on_batch = hook

    # -- thread -------------------------------------------------------------

    def _running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def _on_writer_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _run(self) -> None:
        q = self._q
        self._resume()
        while True:
            try:
                try:
                    item = q.get(timeout=self._idle_wait())
                except Empty:
                    self._resume()
                    continue
                control: _Control | None = None
                batch: list[Any] = []
                if isinstance(item, _Control):
                    control = item
                else:
                    batch.append(item)
                    deadline = time.monotonic() + self._interval
                    while len(batch) < self._max_batch:
                        try:
                            item = q.get_nowait()
                        except Empty:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                break
                            try:
                                item = q.get(timeout=remaining)
                            except Empty:
                                break
                        if isinstance(item, _Control):
                            control = item
                            break
                        batch.append(item)
                if batch:
                    try:
                        self._write_batch(batch)
                    except Exception:
                        log.exception("record writer lost a batch of %d records", len(batch))
                        self.outage.drop(len(batch))
                if control is not None and self._handle(control):
                    break
            except Exception:  # never let the writer die
                log.exception("record writer loop error")
        try:
            if self._commit.cur is not None:
                self._commit.cur.close()
        except Exception:
            log.debug("closing writer cursor failed", exc_info=True)

    def _handle(self, control: _Control) -> bool:
        """Process a control item; True means stop."""
        if isinstance(control, _Flush):
            control.done.set()
        elif isinstance(control, _Call):
            try:
                if self._commit.cur is None:
                    raise RuntimeError(f"the database is not available: {self.outage.reason}")
                control.result = control.fn(self._commit.cur)
            except BaseException as exc:
                control.error = exc
                self._commit.rollback_quietly()
                if needs_reopen(exc):
                    self.outage.failed(exc)
            finally:
                control.done.set()
        elif isinstance(control, _Stop):
            # Drain whatever was submitted concurrently with close().
            rest: list[Any] = []
            while True:
                try:
                    item = self._q.get_nowait()
                except Empty:
                    break
                if isinstance(item, _Control):
                    if rest:
                        self._write_batch(rest)
                        rest = []
                    self._handle(item)
                else:
                    rest.append(item)
            if rest:
                self._write_batch(rest)
            control.done.set()
            return True
        return False

    # -- failures: spool, retry, reopen, replay ---------------------------------

    def _idle_wait(self) -> float | None:
        """How long the thread may wait for records before it must retry or replay (None: forever)."""
        o = self.outage
        return o.wait() if o.reopen_needed or o.backlog or self._recover_before is not None else None

    def _reopen_database(self) -> bool:
        if self._reopen is None:
            self.outage.reopen_needed = False
            return True
        self._commit.use(None)  # the old connection's cursors close with it
        try:
            conn = self._reopen()
            cur = conn.cursor()
        except Exception as exc:
            self.outage.failed(exc)
            return False
        self._conn = conn
        self._commit.use(cur)
        self.outage.reopen_needed = False
        log.warning("reopened the database (after: %s)", self.outage.reason)
        if not self.outage.backlog:
            self.outage.recovered()  # nothing waits; the next write tells whether it works
        return True

    def _resume(self) -> None:
        """When due: reopen the database if needed, replay the spool oldest first (yielding to new
        records after one flush interval), then end the interceptions an earlier run left open."""
        o = self.outage
        if not o.due() or (o.reopen_needed and not self._reopen_database()):
            return
        if o.backlog:
            if not o.replay(self._commit.write, time.monotonic() + max(self._interval, 0.05)):
                return
            try:
                cur = self._commit.cur
                assert o.spool is not None and cur is not None
                o.spool.sync()  # the removals are durable before the markers that guard them go
                spooling.ensure_marker_table(cur)
                spooling.forget_replayed(cur, o.replayed_ids)
                o.replayed_ids.clear()
            except Exception:
                log.warning("could not clear the spool's replay markers (harmless)", exc_info=True)
        if self._recover_before is not None and self._commit.cur is not None:
            try:
                n = recover_open_interceptions(self._commit.cur, datetime.now(UTC), self._recover_before,
                                               self.replica)
            except Exception as exc:
                o.failed(exc)
                return
            self._recover_before = None
            if n:
                log.warning("ended %d interception(s) left open by an earlier crash (status failed)", n)

    # -- writing ------------------------------------------------------------

    def _write_batch(self, records: list[Record]) -> None:
        o = self.outage
        if o.backlog or o.reopen_needed or self._recover_before is not None:
            self._resume()
            if o.backlog:  # older records wait on disk: these go after them
                o.spill(records)
                return
        if not self._commit.write(records):
            o.spill(records)

