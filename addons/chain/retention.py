"""Addon: retention — delete interceptions that ended before the cutoff, with all their rows.

`--aibridge-retention` (default 60d; 0 keeps forever). A purge runs once at
start and then every `aigw_retention_interval` seconds (default 600). Each
batch is one transaction on the writer thread (the one connection that
writes): children first, then the interceptions, so a reader never sees a
child without its interception and a crash never leaves half an interception.
An interception still in flight (ended_at NULL) is never purged, whatever its
start time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

from addons.settings.durations import option_seconds
from addons.sinks import metrics
from addons.store.schema import CHILD_TABLES

log = logging.getLogger("aigw.retention")

DEFAULT_INTERVAL = 600.0
BATCH = 5_000
# Test-only: a file holding an ISO-8601 time that the retention clock reads instead of the system
# clock, so tests can move time forward without sleeping. Never set in production.
TEST_CLOCK_ENV = "AIGW_TEST_CLOCK_FILE"

_SELECT_EXPIRED = (
    "SELECT id::VARCHAR FROM aibridge_interceptions "
    "WHERE ended_at IS NOT NULL AND ended_at < ?::TIMESTAMPTZ ORDER BY ended_at LIMIT ?"
)
_IDS = "(SELECT UNNEST(?::JSON::UUID[]))"


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def purge_batch(conn: duckdb.DuckDBPyConnection, cutoff: datetime, limit: int = BATCH) -> int:
    """Delete up to `limit` interceptions that ended before `cutoff`, and their rows. One transaction."""
    conn.execute("BEGIN")
    try:
        ids = [row[0] for row in conn.execute(_SELECT_EXPIRED, [_ts(cutoff), limit]).fetchall()]
        if ids:
            param = orjson.dumps(ids).decode()
            for table in CHILD_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE interception_id IN {_IDS}", [param])
            conn.execute(f"DELETE FROM aibridge_interceptions WHERE id IN {_IDS}", [param])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(ids)


def purge_orphans(conn: duckdb.DuckDBPyConnection, cutoff: datetime) -> int:
    """Delete old child rows whose interception is gone (cannot normally happen; keeps queries honest)."""
    total = 0
    conn.execute("BEGIN")
    try:
        for table in CHILD_TABLES:
            row = conn.execute(
                f"DELETE FROM {table} WHERE created_at < ?::TIMESTAMPTZ AND interception_id NOT IN "
                "(SELECT id FROM aibridge_interceptions)", [_ts(cutoff)]).fetchone()
            total += int(row[0]) if row else 0
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return total


def purge(conn: duckdb.DuckDBPyConnection, cutoff: datetime, batch: int = BATCH) -> int:
    """Purge everything that ended before `cutoff`, batch by batch; returns interceptions deleted."""
    total = 0
    while True:
        n = purge_batch(conn, cutoff, batch)
        total += n
        if n < batch:
            break
    purge_orphans(conn, cutoff)
    return total


def system_clock() -> datetime:
    return datetime.now(UTC)


def file_clock(path: Path) -> Callable[[], datetime]:
    """A clock that reads its time from a file (test-only; see TEST_CLOCK_ENV)."""

    def now() -> datetime:
        try:
            text = path.read_text().strip()
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except (OSError, ValueError):
            return system_clock()
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    return now


def default_clock() -> Callable[[], datetime]:
    test_file = os.environ.get(TEST_CLOCK_ENV)
    return file_clock(Path(test_file)) if test_file else system_clock


class Retention:
    """Addon: purges about every 10 minutes and once at start, off the event loop."""

    def __init__(self, retention: timedelta | None, writer: Any, now: Callable[[], datetime] | None = None,
                 lease: Callable[[duckdb.DuckDBPyConnection, float], bool] | None = None) -> None:
        self.retention = retention
        self.writer = writer  # RecordWriter: purges run on its thread, ordered with record writes
        # Replicas on a lake: takes or renews the retention lease for that many seconds; False: another
        # replica holds it, this one skips.
        self.lease = lease
        self.now = now or default_clock()
        self.interval = DEFAULT_INTERVAL
        self.batch = BATCH
        self.task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_retention_interval", str, "10m",
                          "Time between retention purges, e.g. 10m, 1h (how long data is kept is "
                          "--aibridge-retention).")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        if "aigw_retention_interval" in updated:
            self.interval = option_seconds(ctx.options.aigw_retention_interval, "aigw_retention_interval")

    def running(self) -> None:
        if self.retention is None:
            log.info("retention disabled: recorded data is kept forever")
            return
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.loop())

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    def cutoff(self) -> datetime:
        assert self.retention is not None
        return self.now() - self.retention

    async def loop(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)

    async def run_once(self) -> int:
        """One purge; never raises (a failed purge is retried at the next interval)."""
        if self.retention is None:
            return 0
        cutoff = self.cutoff()
        purged = 0
        try:
            lease = self.lease
            if lease is not None and not await asyncio.to_thread(
                    self.writer.call, lambda conn: lease(conn, self.interval * 1.5 + 60)):
                return 0
            # One writer call per batch, so record writes interleave with a long purge instead of queueing.
            while True:
                n = await asyncio.to_thread(self.writer.call, lambda conn: purge_batch(conn, cutoff, self.batch),
                                            600.0)
                purged += n
                metrics.RETENTION_PURGED.inc(n)
                if n < self.batch:
                    break
            await asyncio.to_thread(self.writer.call, lambda conn: purge_orphans(conn, cutoff), 600.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention purge failed; retrying in %.0fs", self.interval)
        if purged:
            log.info("retention: purged %d interception(s) that ended before %s", purged, cutoff.isoformat())
        return purged
