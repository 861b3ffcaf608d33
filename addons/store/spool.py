"""The recorder's spool: batches the database could not take, kept on disk until it can.

One file per batch in `<database>.spool/` (directory 0700, files 0600). A batch
is written to a temporary name, fsync'd, renamed and the directory fsync'd, so
a batch file is either complete or absent. File names sort in the order the
batches were written:

    000000000042-<batch id>-<record count>.batch

Each file holds one JSON line per record, `["<record type>", {fields}]`.

Replays go oldest first. The batch id is inserted into `aigw_spool_batches` in
the same transaction as the batch's rows, and a batch whose id is already there
is not written again: a crash between that commit and the file's removal never
duplicates rows. The ids this process replayed are cleared once the spool is
empty (after the directory is fsync'd, so a removed file cannot come back);
other replicas' ids in a shared DuckLake database are theirs to clear.

`Outage` is the writer's state while the database fails: why, when to retry
(backoff), the spool, and what could not be kept (dropped, counted, logged).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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

log = logging.getLogger("aigw.store")

SUFFIX = ".batch"
MARKER_TABLE = "aigw_spool_batches"
RETRY_FIRST = 0.5  # seconds before the first retry of a failing database; doubles up to retry_max
RETRY_MAX = 10.0
# What a record can make the database (or the writer's planning) refuse; anything else is the database failing.
_DATA_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException,
                duckdb.TypeMismatchException, TypeError, ValueError, AttributeError, KeyError)
_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (InterceptionStart, InterceptionEnd, TokenUsageRecord, PromptRecord, ToolUsageRecord, ThoughtRecord)
}
# Fields decoded back from RFC 3339 text, and from JSON arrays (annotations are strings:
# records.py uses postponed evaluation).
_TIMES = {name: tuple(f.name for f in dataclasses.fields(cls) if "datetime" in str(f.type))
          for name, cls in _TYPES.items()}
_TUPLES = {name: tuple(f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple"))
           for name, cls in _TYPES.items()}


def json_default(obj: Any) -> Any:
    """What orjson cannot encode by itself, as the database stores it."""
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, bytes | bytearray):
        return obj.decode("utf-8", "replace")
    return str(obj)


def spool_dir(db: Path) -> Path:
    return db.with_name(db.name + ".spool")


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, _DATA_ERRORS) and "invalidated" not in str(exc)


def needs_reopen(exc: BaseException) -> bool:
    """DuckDB refuses every statement after a fatal error until the database is opened again."""
    return isinstance(exc, duckdb.FatalException | duckdb.ConnectionException) or "invalidated" in str(exc)


@dataclass(slots=True)
class SpoolBatch:
    id: str
    path: Path
    records: list[Record]
    unreadable: int  # lines that did not decode to a record (dropped)


class Spool:
    """The batch files of one database, oldest first. Used by the writer thread only."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._files: deque[tuple[Path, int]] = deque()  # (path, record count)
        self._records = 0
        self._seq = 0

    def open(self) -> None:
        """Create the directory and list the batches an earlier run left (raises OSError)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            self.directory.chmod(0o700)
        for tmp in self.directory.glob("*.tmp"):
            # A crash while writing it: its records never left memory for longer than one flush.
            log.error("removing %s: the gateway stopped while writing it", tmp)
            tmp.unlink(missing_ok=True)
        found = []
        for path in self.directory.glob("*" + SUFFIX):
            seq, _bid, count = _parse_name(path)
            if seq < 0:
                log.error("ignoring %s: not a spool batch name", path)
                continue
            found.append((seq, path, count))
        found.sort()
        self._files = deque((path, count) for _seq, path, count in found)
        self._records = sum(count for _path, count in self._files)
        self._seq = found[-1][0] + 1 if found else 0

    @property
    def records(self) -> int:
        """Records waiting in the spool."""
        return self._records

    def __len__(self) -> int:
        return len(self._files)

    def append(self, records: list[Record]) -> None:
        """Write one batch durably (raises OSError, e.g. when the disk is full)."""
        batch_id = uuid.uuid4().hex
        final = self.directory / f"{self._seq:012d}-{batch_id}-{len(records)}{SUFFIX}"
        tmp = final.with_suffix(".tmp")
        data = b"".join(encode_record(r) for r in records)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, final)
        self.sync()
        self._seq += 1
        self._files.append((final, len(records)))
        self._records += len(records)

    def oldest(self) -> SpoolBatch | None:
        """The oldest batch, decoded (raises OSError when it cannot be read)."""
        if not self._files:
            return None
        path, _count = self._files[0]
        records: list[Record] = []
        unreadable = 0
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                records.append(decode_record(line))
            except Exception as exc:
                # Never the line itself: it holds prompt text.
                log.error("dropping an unreadable spool record: %s line %d (%d bytes, %s)", path, number, len(line),
                          type(exc).__name__)
                unreadable += 1
        return SpoolBatch(_parse_name(path)[1], path, records, unreadable)

    def remove(self, batch: SpoolBatch) -> None:
        """Forget the oldest batch once its rows are committed (raises OSError)."""
        path, count = self._files[0]
        assert path == batch.path
        path.unlink(missing_ok=True)
        self._files.popleft()
        self._records -= count

    def sync(self) -> None:
        """Make renames and removals in the directory durable."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Outage:
    """The writer's view of a failing database (used by the writer thread only)."""

    def __init__(self, spool: Spool | None, retry_max: float = RETRY_MAX) -> None:
        self.spool = spool
        self.retry_max = retry_max
        self.reason: str | None = None  # why the last write failed, while writes keep failing
        self.reopen_needed = False
        self.retry_at = 0.0
        self.retry_wait = 0.0
        self.failures = 0  # failed writes, replays and reopens
        self.dropped = 0  # records lost: the spool could not take them, or the database refused them
        self.on_failure: Callable[[], None] | None = None
        self.on_dropped: Callable[[int], None] | None = None
        self.replayed_ids: list[str] = []  # batches this process replayed whose markers are still to clear

    @property
    def spooled(self) -> int:
        return self.spool.records if self.spool is not None else 0

    @property
    def backlog(self) -> bool:
        """Spooled batches wait: new ones go after them."""
        return self.spool is not None and len(self.spool) > 0

    def due(self) -> bool:
        return time.monotonic() >= self.retry_at

    def wait(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        _call(self.on_failure)
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        if self.reason is None:
            where = f"spooling records to {self.spool.directory}" if self.spool is not None else "no spool"
            log.error("database write failed (%s: %s); %s and retrying", type(exc).__name__, first_line, where)
        self.reason = f"{type(exc).__name__}: {first_line}"
        self.reopen_needed = self.reopen_needed or needs_reopen(exc)
        self.retry_wait = min(self.retry_max, self.retry_wait * 2 or RETRY_FIRST)
        self.retry_at = time.monotonic() + self.retry_wait

    def recovered(self) -> None:
        if self.reason is not None:
            log.warning("database writes work again (after: %s); %d spooled record(s) to replay",
                        self.reason, self.spooled)
        self.reason = None
        self.retry_wait = self.retry_at = 0.0

    def drop(self, n: int) -> None:
        self.dropped += n
        _call(self.on_dropped, n)

    def spill(self, records: list[Record]) -> None:
        """Keep a batch the database cannot take now on disk, after the ones already there."""
        if self.spool is None:
            log.error("dropped %d records: the database failed (%s) and no spool is configured",
                      len(records), self.reason)
            self.drop(len(records))
            return
        try:
            self.spool.append(records)
        except OSError as exc:
            log.error("dropped %d records: the database failed (%s) and the spool %s cannot be written: %s",
                      len(records), self.reason, self.spool.directory, exc)
            self.drop(len(records))

    def replay(self, write: Callable[[list[Record], str], bool], until: float) -> bool:
        """Write spooled batches oldest first (`write(records, batch_id)`, True when committed) until
        the spool is empty (True), `until` (a monotonic time) passes or something fails (False)."""
        spool = self.spool
        assert spool is not None
        while len(spool):
            if time.monotonic() > until:
                return False
            try:
                batch = spool.oldest()
                assert batch is not None
            except OSError as exc:
                self.failed(exc)
                return False
            if not write(batch.records, batch.id):
                return False
            if batch.unreadable:
                self.drop(batch.unreadable)
            try:
                spool.remove(batch)
            except OSError as exc:  # replayed again later: its marker keeps that from duplicating
                log.error("could not remove the replayed spool batch %s: %s", batch.path, exc)
                self.failed(exc)
                return False
            self.replayed_ids.append(batch.id)
        log.warning("spool replayed: every spooled record is in the database")
        return True


def _call(hook: Callable[..., None] | None, *args: int) -> None:
    if hook is not None:
        try:
            hook(*args)
        except Exception:
            log.exception("recorder metrics hook failed")


def _parse_name(path: Path) -> tuple[int, str, int]:
    parts = path.name.removesuffix(SUFFIX).split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        return -1, "", 0
    return int(parts[0]), parts[1], int(parts[2])


def encode_record(record: Record) -> bytes:
    """One JSON line `["<record type>", {fields}]` (the spool's and the workers' pipe format)."""
    # orjson encodes the slotted dataclasses field by field; datetimes become RFC 3339 text.
    return orjson.dumps([type(record).__name__, record], default=json_default,
                        option=orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)


def decode_record(line: bytes) -> Record:
    name, fields = orjson.loads(line)
    cls = _TYPES[name]
    for key in _TIMES[name]:
        if isinstance(fields.get(key), str):
            fields[key] = datetime.fromisoformat(fields[key])
    for key in _TUPLES[name]:
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    return cls(**fields)  # type: ignore[no-any-return]


# -- replay markers (run on the writer's cursor, inside its transactions) ------------

def ensure_marker_table(cur: duckdb.DuckDBPyConnection) -> None:
    # No primary key: the catalog may be one without constraints (DuckLake); lookups go by id.
    cur.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (id VARCHAR NOT NULL, replayed_at TIMESTAMPTZ NOT NULL)")


def replayed(cur: duckdb.DuckDBPyConnection, batch_id: str) -> bool:
    return cur.execute(f"SELECT 1 FROM {MARKER_TABLE} WHERE id = ?", [batch_id]).fetchone() is not None


def mark_replayed(cur: duckdb.DuckDBPyConnection, batch_id: str) -> None:
    cur.execute(f"INSERT INTO {MARKER_TABLE} VALUES (?, now())", [batch_id])


def forget_replayed(cur: duckdb.DuckDBPyConnection, batch_ids: list[str]) -> None:
    """Clear the markers of these batches only: replicas sharing a DuckLake database share the table."""
    if batch_ids:
        cur.execute(f"DELETE FROM {MARKER_TABLE} WHERE list_contains(?, id)", [batch_ids])
