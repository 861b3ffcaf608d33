"""Addon: the one recorder every interception goes through.

It owns the DuckDB connection (one writing process) and the writer thread, and
fans each record out to the other sinks (structured logs, metrics). While the
database fails, the writer spools batches next to it (`<db>.spool/`) and
`failing()` says so (the gateway's `/readyz` answers 503 with it).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from addons.flow.records import InterceptionStart, Record
from addons.pricing.pricer import Pricer, usage_price
from addons.settings.config import Settings
from addons.store import db, lake
from addons.store.spool import Spool, spool_dir
from addons.store.views import create_views
from addons.store.writer import RecordWriter

log = logging.getLogger("aigw.recorder")


class Recorder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn: duckdb.DuckDBPyConnection | None = None
        self.writer: RecordWriter | None = None
        self.sinks: list[Callable[[Record], None]] = []
        self.worker: int | None = None  # with several workers: this process's id, in each interception's metadata

    def open(self, before_start: Callable[[RecordWriter], None] | None = None) -> None:
        """Open the database and start the writer; raises DatabaseLockedError early, before serving.

        The writer first replays what an earlier run spooled, then ends the interceptions that run
        left open (a crash), then writes new records. `before_start` gets the writer before that
        (metrics hooks, so the replay's failures and drops are counted too)."""
        if threading.current_thread() is threading.main_thread():
            # Under a file-size limit (ulimit -f) a write must fail with EFBIG, which the writer
            # spools around, instead of SIGXFSZ killing the process.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self.conn = self.connect()
        spool = Spool(spool_dir(self.settings.db))
        spool.open()
        if spool.records:
            log.warning("%d record(s) spooled by an earlier run: replaying them", spool.records)
        self.writer = RecordWriter(
            self.conn, price=usage_price(Pricer(self.settings.prices_file)), spool=spool, reopen=self.reopen,
            recover_before=datetime.now(UTC),
            replica=lake.replica_id(self.settings.home.path) if self.settings.lake else None)
        if before_start is not None:
            before_start(self.writer)
        self.writer.start()

    def connect(self) -> duckdb.DuckDBPyConnection:
        shared = self.settings.lake
        # The admin query endpoint shares this instance: bounded like the analysts' CLI reads.
        limits = db.instance_limits(self.settings.analytics_memory_limit)
        conn = lake.connect(shared, limits=limits) if shared else db.connect(self.settings.db, limits=limits)
        try:
            if shared:  # replicas starting together replace the views at the same time: retry the loser
                lake.retry_conflicts(conn, create_views)
            else:
                create_views(conn)
            from addons.chain.analytics import snapshot_dir  # imported here: analytics imports this module

            # The admin query endpoint runs SQL on this database: no file, network or extension access
            # (a lake: its data files only).
            allowed: list[Path | str] = [snapshot_dir(self.settings)]
            if shared:
                allowed.append(shared.data_path if "://" in shared.data_path else Path(shared.data_path))
            db.lock_down(conn, allowed)
        except BaseException:
            conn.close()
            raise
        return conn

    def reopen(self) -> duckdb.DuckDBPyConnection:
        """Close the connection (and every cursor of it) and open the database again (writer thread).

        DuckDB refuses every statement after a fatal error until no connection holds the database."""
        old = self.conn
        if old is not None:
            try:
                old.close()
            except Exception:
                log.debug("closing the failed connection", exc_info=True)
        self.conn = self.connect()
        return self.conn

    def failing(self) -> str | None:
        """That records are not reaching the database right now (None: they are). `/readyz` is
        unauthenticated: the database's error (paths, values) stays in the writer's ERROR log."""
        if self.writer is None:
            return "the recorder is not open"
        outage = self.writer.outage
        if outage.reason is None:
            return None
        if outage.spool is None:
            return "recording to the database is failing; records are dropped (no spool)"
        return f"recording to the database is failing; records are spooled ({outage.spooled} so far)"

    def record(self, record: Record) -> None:
        assert self.writer is not None
        if self.worker is not None and type(record) is InterceptionStart:
            record.metadata["worker"] = self.worker
        self.writer.submit(record)
        fan_out(self.sinks, record)

    def done(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def fan_out(sinks: list[Callable[[Record], None]], record: Record) -> None:
    """Each sink gets the record; one that fails is logged and costs the others nothing."""
    for sink in sinks:
        try:
            sink(record)
        except Exception:
            log.exception("record sink failed")
