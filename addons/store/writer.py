"""The DuckDB writer: one thread owns a cursor and appends records in batches.

`submit()` is called from the proxy's event loop and only puts the record on
a queue. The writer thread collects records for up to `flush_interval`
seconds (or `max_batch` records) and writes the whole batch in one
transaction.

When the database fails (disk full, I/O error, invalidated), batches go to the
spool (addons/store/spool.py) instead, in order; the writer retries with
backoff, reopens the database if DuckDB invalidated it, and replays the spool
oldest first before it writes anything new. A record the database refuses
(a bug) is dropped alone, with an ERROR log and the dropped-records count.

Bulk appends: binding a Python list as a query parameter costs ~0.2 ms per
element in DuckDB's Python client and `executemany` ~0.5 ms per row, so each
table's rows are sent as ONE JSON text (an array of columns, encoded by
orjson) and expanded inside DuckDB:

    INSERT INTO t (a, b) SELECT UNNEST(j[1]::UUID[]), UNNEST(j[2]::VARCHAR[])
    FROM (SELECT ?::JSON::JSON[] AS j)

That is several hundred thousand rows/s (see scripts/bench-recorder) and is
plain SQL, so it works unchanged against an attached DuckLake catalog.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

import duckdb
import orjson

from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    Record,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.store import spool as spooling
from addons.store.lake import is_conflict
from addons.store.spool import RETRY_MAX, Outage, Spool, is_data_error, json_default, needs_reopen

log = logging.getLogger("aigw.store")

T = TypeVar("T")

_JSON_OPTS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS

CONFLICT_RETRIES = 50  # a batch's commit losing to another replica's is simply run again
THREAD_MAP_SIZE = 50_000  # entries per map; a miss costs one database lookup on the writer thread
_RETRY_GROUP = 128
_MISSING = object()


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=json_default, option=_JSON_OPTS).decode()


def _ts(dt: datetime) -> str:
    return _dumps(dt).strip('"')


# (column, DuckDB type) per table, in the order rows are built below.
_INTERCEPTION_COLS = (
    ("id", "UUID"),
    ("initiator_id", "UUID"),
    ("api_key_id", "VARCHAR"),
    ("provider", "VARCHAR"),
    ("provider_name", "VARCHAR"),
    ("model", "VARCHAR"),
    ("client", "VARCHAR"),
    ("client_session_id", "VARCHAR"),
    ("thread_parent_id", "UUID"),
    ("thread_root_id", "UUID"),
    ("credential_kind", "VARCHAR"),
    ("credential_hint", "VARCHAR"),
    ("started_at", "TIMESTAMPTZ"),
    ("ended_at", "TIMESTAMPTZ"),
    ("status", "VARCHAR"),
    ("metadata", "JSON"),
)
_I_PARENT, _I_ROOT, _I_ENDED, _I_STATUS, _I_META = 8, 9, 13, 14, 15

_TOKEN_COLS = (
    ("interception_id", "UUID"),
    ("provider_response_id", "VARCHAR"),
    ("input_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
    ("cache_read_input_tokens", "BIGINT"),
    ("cache_write_input_tokens", "BIGINT"),
    ("metadata", "JSON"),
    ("created_at", "TIMESTAMPTZ"),
    ("cost_usd", "DOUBLE"),
)
_PROMPT_COLS = (
    ("interception_id", "UUID"),
    ("provider_response_id", "VARCHAR"),
    ("prompt", "VARCHAR"),
    ("created_at", "TIMESTAMPTZ"),
)
_TOOL_COLS = (
    ("interception_id", "UUID"),
    ("provider_response_id", "VARCHAR"),
    ("provider_tool_call_id", "VARCHAR"),
    ("provider_item_id", "VARCHAR"),
    ("tool", "VARCHAR"),
    ("input", "VARCHAR"),
    ("server_url", "VARCHAR"),
    ("injected", "BOOLEAN"),
    ("invocation_error", "VARCHAR"),
    ("created_at", "TIMESTAMPTZ"),
)
_THOUGHT_COLS = (
    ("interception_id", "UUID"),
    ("content", "VARCHAR"),
    ("metadata", "JSON"),
    ("created_at", "TIMESTAMPTZ"),
)


def _unnest_select(cols: Iterable[tuple[str, str]], aliases: bool = False) -> str:
    parts = []
    for i, (name, typ) in enumerate(cols, start=1):
        expr = f"UNNEST(j[{i}]::{typ}[])"
        parts.append(f"{expr} AS {name}" if aliases else expr)
    return f"SELECT {', '.join(parts)} FROM (SELECT ?::JSON::JSON[] AS j)"


def _insert_sql(table: str, cols: tuple[tuple[str, str], ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(c for c, _ in cols)}) {_unnest_select(cols)}"


_SQL_INTERCEPTIONS = _insert_sql("aibridge_interceptions", _INTERCEPTION_COLS)
_SQL_TOKENS = _insert_sql("aibridge_token_usages", _TOKEN_COLS)
_SQL_PROMPTS = _insert_sql("aibridge_user_prompts", _PROMPT_COLS)
_SQL_TOOLS = _insert_sql("aibridge_tool_usages", _TOOL_COLS)
_SQL_THOUGHTS = _insert_sql("aibridge_model_thoughts", _THOUGHT_COLS)
_END_COLS = (("id", "UUID"), ("ended_at", "TIMESTAMPTZ"), ("status", "VARCHAR"), ("metadata", "JSON"))
_SQL_ENDS = (
    "UPDATE aibridge_interceptions AS i SET ended_at = e.ended_at, status = e.status, "
    "metadata = json_merge_patch(coalesce(i.metadata, '{}'::JSON), e.metadata) "
    f"FROM ({_unnest_select(_END_COLS, aliases=True)}) AS e WHERE i.id = e.id"
)
# Prompts are recorded when the request is accepted, before the response id is known: the end fills it in.
_PROMPT_ID_COLS = (("id", "UUID"), ("response_id", "VARCHAR"))
_SQL_PROMPT_IDS = (
    "UPDATE aibridge_user_prompts AS p SET provider_response_id = e.response_id "
    f"FROM ({_unnest_select(_PROMPT_ID_COLS, aliases=True)}) AS e "
    # The time bound lets DuckDB skip every older row group (appends are in time order).
    "WHERE p.interception_id = e.id AND p.provider_response_id IS NULL AND p.created_at >= ?::TIMESTAMPTZ"
)
_SQL_FIND_CALLS = (
    "SELECT t.provider_tool_call_id, t.interception_id::VARCHAR, i.id IS NOT NULL, "
    "i.thread_root_id::VARCHAR "
    "FROM aibridge_tool_usages AS t LEFT JOIN aibridge_interceptions AS i ON i.id = t.interception_id "
    "WHERE t.provider_tool_call_id IN (SELECT UNNEST(?::JSON::VARCHAR[])) "
    "QUALIFY row_number() OVER (PARTITION BY t.provider_tool_call_id ORDER BY t.created_at DESC) = 1"
)
_SQL_FIND_ROOTS = (
    "SELECT id::VARCHAR, thread_root_id::VARCHAR FROM aibridge_interceptions "
    "WHERE id IN (SELECT try_cast(u AS UUID) FROM (SELECT UNNEST(?::JSON::VARCHAR[]) AS u))"
)

RECOVERED_ERROR = "gateway stopped before the interception ended"


def recover_open_interceptions(conn: duckdb.DuckDBPyConnection, now: datetime,
                               before: datetime | None = None, replica: str | None = None) -> int:
    """End interceptions a crash left open (status 'failed'), those started before `before` if given,
    only `replica`'s when given (a shared lake: the others' are still streaming); returns how many."""
    mine = "" if replica is None else " AND json_extract_string(metadata, '$.replica') = ?"
    row = conn.execute(
        "UPDATE aibridge_interceptions SET ended_at = ?::TIMESTAMPTZ, status = 'failed', "
        "metadata = json_merge_patch(coalesce(metadata, '{}'::JSON), ?::JSON) WHERE ended_at IS NULL "
        "AND started_at < ?::TIMESTAMPTZ" + mine,
        [_ts(now), _dumps({"error": RECOVERED_ERROR}), _ts(before or now), *([replica] if replica else [])],
    ).fetchone()
    return int(row[0]) if row else 0


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch, as DuckDB's json_merge_patch applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _compose_patches(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One patch with the effect of applying `first`, then `second` (nulls kept)."""
    result = dict(first)
    for key, value in second.items():
        prev = result.get(key)
        if isinstance(value, dict) and isinstance(prev, dict):
            result[key] = _compose_patches(prev, value)
        else:
            result[key] = value
    return result


class _Bounded:
    """A size-bounded map that forgets the least recently used entry."""

    __slots__ = ("_cap", "_d")

    def __init__(self, cap: int) -> None:
        self._d: OrderedDict[str, str | None] = OrderedDict()
        self._cap = cap

    def __contains__(self, key: str) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str, default: Any = None) -> Any:
        d = self._d
        if key in d:
            d.move_to_end(key)
            return d[key]
        return default

    def pop(self, key: str) -> None:
        self._d.pop(key, None)

    def set(self, key: str, value: str | None) -> None:
        d = self._d
        d[key] = value
        d.move_to_end(key)
        if len(d) > self._cap:
            d.popitem(last=False)


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


class _Plan:
    __slots__ = ("ends", "interceptions", "prompt_ids", "prompts", "prompts_done", "thoughts", "tokens", "tools")

    def __init__(self) -> None:
        self.interceptions: list[list[Any]] = []
        self.tokens: list[tuple[Any, ...]] = []
        self.prompts: list[list[Any]] = []
        self.prompt_ids: list[tuple[str, str, str]] = []  # (interception, response id, prompt created_at)
        self.prompts_done: list[str] = []  # interceptions whose waiting prompt this plan settles
        self.tools: list[tuple[Any, ...]] = []
        self.thoughts: list[tuple[Any, ...]] = []
        self.ends: dict[str, list[Any]] = {}


class RecordWriter:
    """Owns one cursor on a dedicated thread and appends records in batches."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        flush_interval: float = 0.25,
        max_batch: int = 5000,
        price: Callable[[TokenUsageRecord], float | None] | None = None,
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
        before this time (a crash)."""
        self._conn = conn
        self._interval = flush_interval
        self._max_batch = max(1, max_batch)
        self._price = price
        self._q: SimpleQueue[Any] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._cur: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._warned_closed = False
        # provider_tool_call_id -> interception that recorded it (None: known absent)
        self._tool_owner = _Bounded(thread_map_size)
        # interception id -> its thread_root_id (None: it is a root itself), for interceptions that
        # recorded tool calls (only those can be parents); misses are looked up in the database.
        self._roots = _Bounded(thread_map_size)
        # the same for interceptions started and not yet ended, until they record a tool call
        self._open_roots = _Bounded(thread_map_size)
        # interception id -> created_at of its prompt, written before the response id was known
        self._open_prompts = _Bounded(thread_map_size)
        self.outage = Outage(spool, retry_max)  # failures, spool, drops (metrics hook in here)
        self._reopen = reopen
        self._recover_before = recover_before
        # On a lake shared by replicas: stamped on each interception, so that a restart ends only its own.
        self.replica = replica
        self._markers_ready = False
        self._rows_written = 0
        self._batches = 0
        self._last_flush_seconds = 0.0
        self.on_batch: Callable[[int, float], None] | None = None

    # -- public API ---------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._cur = self._conn.cursor()
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
                self._cur = self._conn.cursor()
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
            assert self._cur is not None
            return fn(self._cur)
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
        return self._rows_written

    @property
    def last_flush_seconds(self) -> float:
        return self._last_flush_seconds

    @property
    def batches(self) -> int:
        return self._batches

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
            if self._cur is not None:
                self._cur.close()
        except Exception:
            log.debug("closing writer cursor failed", exc_info=True)

    def _handle(self, control: _Control) -> bool:
        """Process a control item; True means stop."""
        if isinstance(control, _Flush):
            control.done.set()
        elif isinstance(control, _Call):
            try:
                if self._cur is None:
                    raise RuntimeError(f"the database is not available: {self.outage.reason}")
                control.result = control.fn(self._cur)
            except BaseException as exc:
                control.error = exc
                self._rollback_quietly()
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

    def _rollback_quietly(self) -> None:
        try:
            assert self._cur is not None
            self._cur.execute("ROLLBACK")
        except Exception:
            pass  # no transaction was open

    # -- failures: spool, retry, reopen, replay ---------------------------------

    def _idle_wait(self) -> float | None:
        """How long the thread may wait for records before it must retry or replay (None: forever)."""
        o = self.outage
        return o.wait() if o.reopen_needed or o.backlog or self._recover_before is not None else None

    def _reopen_database(self) -> bool:
        if self._reopen is None:
            self.outage.reopen_needed = False
            return True
        self._cur = None  # the old connection's cursors close with it
        try:
            conn = self._reopen()
            cur = conn.cursor()
        except Exception as exc:
            self.outage.failed(exc)
            return False
        self._conn, self._cur = conn, cur
        self.outage.reopen_needed = False
        self._markers_ready = False
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
            if not o.replay(self._write, time.monotonic() + max(self._interval, 0.05)):
                return
            try:
                assert o.spool is not None and self._cur is not None
                o.spool.sync()  # the removals are durable before the markers that guard them go
                spooling.ensure_marker_table(self._cur)
                spooling.forget_replayed(self._cur, o.replayed_ids)
                o.replayed_ids.clear()
            except Exception:
                log.warning("could not clear the spool's replay markers (harmless)", exc_info=True)
        if self._recover_before is not None and self._cur is not None:
            try:
                n = recover_open_interceptions(self._cur, datetime.now(UTC), self._recover_before, self.replica)
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
        if not self._write(records):
            o.spill(records)

    def _write(self, records: list[Record], marker: str | None = None) -> bool:
        """Write `records` in one transaction (with the spool batch id `marker`); a record the
        database refuses is dropped alone. False: the database failed (the caller keeps the records)."""
        exc = self._attempt(records, marker)
        if exc is None:
            return True
        if not is_data_error(exc):
            self.outage.failed(exc)
            return False
        # The exception's text can quote bound values (prompts): its type only.
        log.error("batch of %d records refused (%s); retrying in groups of %d", len(records), type(exc).__name__,
                  _RETRY_GROUP)
        # Dry runs (rolled back) find the refused records; the rest is then written in one
        # transaction, so a spool batch is still written once, with its marker.
        accepted: list[Record] = []
        for i in range(0, len(records), _RETRY_GROUP):
            group = records[i : i + _RETRY_GROUP]
            exc = self._attempt(accepted + group, dry_run=True)
            if exc is not None and is_data_error(exc):
                group, exc = self._isolate(group, accepted)
            if exc is not None:
                self.outage.failed(exc)
                return False
            accepted += group
        if not accepted and marker is None:
            return True
        exc = self._attempt(accepted, marker)
        if exc is not None:
            self.outage.failed(exc)
            return False
        return True

    def _isolate(self, group: list[Record], accepted: list[Record]) -> tuple[list[Record], Exception | None]:
        """The records of `group` the database takes after `accepted` (dry runs); the others are
        dropped, logged and counted. Each record on its own first (cheap); only if the rest still
        fails, each after everything kept (refused only together with others, e.g. a duplicate id)."""
        kept: list[Record] = []
        for record in group:
            exc = self._attempt([record], dry_run=True)
            if exc is None:
                kept.append(record)
            elif not is_data_error(exc):
                return [], exc
            else:
                self._refused(record, exc)
        exc = self._attempt(accepted + kept, dry_run=True)
        if exc is None or not is_data_error(exc):
            return kept, exc
        together: list[Record] = []
        for record in kept:
            exc = self._attempt([*accepted, *together, record], dry_run=True)
            if exc is None:
                together.append(record)
            elif not is_data_error(exc):
                return [], exc
            else:
                self._refused(record, exc)
        return together, None

    def _refused(self, record: Record, exc: Exception) -> None:
        log.error("dropped %s for interception %s (%s)", type(record).__name__,
                  getattr(record, "interception_id", getattr(record, "id", "?")), type(exc).__name__)
        self.outage.drop(1)

    def _attempt(self, records: list[Record], marker: str | None = None,
                 dry_run: bool = False) -> Exception | None:
        """One transaction; returns what failed, if anything. A marker already recorded: nothing to do."""
        cur = self._cur
        if cur is None:
            return duckdb.ConnectionException(f"the database is not open ({self.outage.reason})")
        started = time.perf_counter()
        try:
            plan = self._plan(records)
            if marker is not None and not self._markers_ready:
                spooling.ensure_marker_table(cur)
                self._markers_ready = True
            for attempt in range(CONFLICT_RETRIES + 1):
                cur.execute("BEGIN")
                try:
                    if marker is not None and spooling.replayed(cur, marker):
                        cur.execute("ROLLBACK")
                        return None
                    self._execute(cur, plan)
                    if marker is not None:
                        spooling.mark_replayed(cur, marker)
                    cur.execute("ROLLBACK" if dry_run else "COMMIT")
                    break
                except BaseException as exc:
                    self._rollback_quietly()
                    # A lake: another replica committed into the same table first; nothing was written.
                    if not is_conflict(exc) or attempt == CONFLICT_RETRIES:
                        raise
                time.sleep(random.uniform(0.005, 0.05))
        except Exception as exc:
            return exc
        if dry_run:
            return None
        for iid in plan.prompts_done:
            self._open_prompts.pop(iid)
        elapsed = time.perf_counter() - started
        self._rows_written += len(records)
        self._batches += 1
        self._last_flush_seconds = elapsed
        self.outage.recovered()
        hook = self.on_batch
        if hook is not None:
            try:
                hook(len(records), elapsed)
            except Exception:
                log.exception("on_batch hook failed")
        return None

    def _execute(self, cur: duckdb.DuckDBPyConnection, plan: _Plan) -> None:
        # Interceptions first, then their children, then ends of earlier batches.
        if plan.interceptions:
            cur.execute(_SQL_INTERCEPTIONS, [_dumps(list(zip(*plan.interceptions, strict=True)))])
        if plan.tokens:
            cur.execute(_SQL_TOKENS, [_dumps(list(zip(*plan.tokens, strict=True)))])
        if plan.prompts:
            cur.execute(_SQL_PROMPTS, [_dumps(list(zip(*plan.prompts, strict=True)))])
        if plan.tools:
            cur.execute(_SQL_TOOLS, [_dumps(list(zip(*plan.tools, strict=True)))])
        if plan.thoughts:
            cur.execute(_SQL_THOUGHTS, [_dumps(list(zip(*plan.thoughts, strict=True)))])
        if plan.ends:
            rows = [(iid, *end) for iid, end in plan.ends.items()]
            cur.execute(_SQL_ENDS, [_dumps(list(zip(*rows, strict=True)))])
        if plan.prompt_ids:
            since = min(created for _, _, created in plan.prompt_ids)
            ids = [(iid, rid) for iid, rid, _ in plan.prompt_ids]
            cur.execute(_SQL_PROMPT_IDS, [_dumps(list(zip(*ids, strict=True))), since])

    def _plan(self, records: list[Record]) -> _Plan:
        self._prefetch_threads(records)
        plan = _Plan()
        open_rows: dict[str, list[Any]] = {}
        open_prompts: dict[str, list[Any]] = {}  # prompts of this batch still without a response id
        prompts_waiting = self._open_prompts
        tool_owner = self._tool_owner
        roots = self._roots
        open_roots = self._open_roots
        price = self._price
        for r in records:
            kind = type(r)
            if kind is ToolUsageRecord:
                plan.tools.append(
                    (
                        r.interception_id,
                        r.provider_response_id,
                        r.provider_tool_call_id,
                        r.provider_item_id,
                        r.tool,
                        r.input,
                        r.server_url,
                        r.injected,
                        r.invocation_error,
                        r.created_at,
                    )
                )
                if r.provider_tool_call_id:
                    tool_owner.set(r.provider_tool_call_id, r.interception_id)
                    owner = r.interception_id
                    if owner not in roots and owner in open_roots:
                        roots.set(owner, open_roots.get(owner))
            elif kind is TokenUsageRecord:
                cost = None
                if price is not None:
                    try:
                        cost = price(r)
                    except Exception:
                        log.debug("pricing %s/%s failed", r.provider, r.model, exc_info=True)
                plan.tokens.append(
                    (
                        r.interception_id,
                        r.provider_response_id,
                        r.input_tokens,
                        r.output_tokens,
                        r.cache_read_input_tokens,
                        r.cache_write_input_tokens,
                        r.metadata,
                        r.created_at,
                        cost,
                    )
                )
            elif kind is PromptRecord:
                prompt_row = [r.interception_id, r.provider_response_id, r.prompt, r.created_at]
                plan.prompts.append(prompt_row)
                if r.provider_response_id is None:
                    open_prompts[r.interception_id] = prompt_row
            elif kind is InterceptionStart:
                metadata = dict(r.metadata) if r.metadata else {}
                parent = root = None
                cid = r.correlating_tool_call_id
                if self.replica is not None:
                    metadata["replica"] = self.replica
                if cid:
                    metadata["correlating_tool_call_id"] = cid
                    parent = tool_owner.get(cid)
                    if parent is not None and parent != r.id:
                        parent_root = roots.get(parent, open_roots.get(parent, _MISSING))
                        root = parent if parent_root is _MISSING or parent_root is None else parent_root
                    else:
                        parent = None
                open_roots.set(r.id, root)
                row = [
                    r.id,
                    r.initiator_id,
                    r.api_key_id,
                    r.provider,
                    r.provider_name,
                    r.model,
                    r.client or "Unknown",
                    r.client_session_id,
                    parent,
                    root,
                    r.credential_kind,
                    r.credential_hint,
                    r.started_at,
                    None,
                    None,
                    metadata,
                ]
                plan.interceptions.append(row)
                open_rows[r.id] = row
            elif kind is InterceptionEnd:
                open_roots.pop(r.id)
                response_id = r.metadata.get("response_id") if r.metadata else None
                prompt_row = open_prompts.pop(r.id, None)
                if prompt_row is not None:
                    prompt_row[1] = response_id
                else:
                    created = prompts_waiting.get(r.id)
                    if created is not None:
                        plan.prompts_done.append(r.id)
                        if response_id:
                            plan.prompt_ids.append((r.id, response_id, created))
                row = open_rows.get(r.id)
                if row is not None:
                    row[_I_ENDED] = r.ended_at
                    row[_I_STATUS] = r.status
                    if r.metadata:
                        row[_I_META] = merge_patch(row[_I_META], r.metadata)
                else:
                    prev = plan.ends.get(r.id)
                    patch = dict(r.metadata) if r.metadata else {}
                    if prev is not None:
                        patch = _compose_patches(prev[2], patch)
                    plan.ends[r.id] = [r.ended_at, r.status, patch]
            elif kind is ThoughtRecord:
                plan.thoughts.append((r.interception_id, r.content, r.metadata, r.created_at))
            else:
                raise TypeError(f"not a record: {kind.__name__}")
        for iid, prompt_row in open_prompts.items():  # responses still running: filled in by their ends
            prompts_waiting.set(iid, _ts(prompt_row[3]))
        return plan

    def _prefetch_threads(self, records: list[Record]) -> None:
        """Load from the database what the in-memory maps miss (e.g. after a restart)."""
        tool_owner = self._tool_owner
        roots = self._roots
        need_calls: set[str] = set()
        need_roots: set[str] = set()
        seen_calls: set[str] = set()
        seen_starts: set[str] = set()
        for r in records:
            kind = type(r)
            if kind is ToolUsageRecord:
                seen_calls.add(r.provider_tool_call_id)
            elif kind is InterceptionStart:
                seen_starts.add(r.id)
                cid = r.correlating_tool_call_id
                if not cid or cid in seen_calls:
                    continue
                if cid in tool_owner:
                    parent = tool_owner.get(cid)
                    if (parent is not None and parent not in roots and parent not in self._open_roots
                            and parent not in seen_starts):
                        need_roots.add(parent)
                else:
                    need_calls.add(cid)
        if not need_calls and not need_roots:
            return
        cur = self._cur
        assert cur is not None
        try:
            if need_calls:
                found = cur.execute(_SQL_FIND_CALLS, [_dumps(sorted(need_calls))]).fetchall()
                for cid, parent, parent_exists, parent_root in found:
                    tool_owner.set(cid, parent)
                    need_calls.discard(cid)
                    if parent in roots:
                        continue
                    if parent_exists:
                        roots.set(parent, parent_root)
                    else:
                        need_roots.add(parent)
                # Not recorded anywhere: remember that, unless another replica may record it any moment.
                for cid in need_calls if self.replica is None else ():
                    tool_owner.set(cid, None)
            need_roots = {p for p in need_roots if p not in roots}
            if need_roots:
                found_roots = dict(cur.execute(_SQL_FIND_ROOTS, [_dumps(sorted(need_roots))]).fetchall())
                for parent in need_roots:
                    roots.set(parent, found_roots.get(parent))
        except Exception:
            log.warning("looking up thread parents failed; leaving them unlinked", exc_info=True)
