"""Addon: the one recorder every interception goes through.

It owns the DuckDB connection (one writing process) and the writer thread, and
fans each record out to the other sinks (structured logs, metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import duckdb

from addons.config import Settings
from addons.records import Record
from addons.store import db
from addons.store.prices import Pricer
from addons.store.views import create_views
from addons.store.writer import RecordWriter, recover_open_interceptions

log = logging.getLogger("aigw.recorder")


class Recorder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn: duckdb.DuckDBPyConnection | None = None
        self.writer: RecordWriter | None = None
        self.sinks: list[Callable[[Record], None]] = []

    def open(self) -> None:
        """Open the database and start the writer; raises DatabaseLockedError early, before serving."""
        self.conn = db.connect(self.settings.db)
        create_views(self.conn)
        recovered = recover_open_interceptions(self.conn, datetime.now(UTC))
        if recovered:
            log.warning("ended %d interception(s) left open by an earlier crash (status failed)", recovered)
        pricer = Pricer()
        self.writer = RecordWriter(self.conn, price=lambda usage: pricer.cost(
            usage.provider, usage.model, usage.input_tokens, usage.output_tokens,
            usage.cache_read_input_tokens, usage.cache_write_input_tokens, usage.metadata))
        self.writer.start()

    def record(self, record: Record) -> None:
        assert self.writer is not None
        self.writer.submit(record)
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:
                log.exception("record sink failed")

    def done(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
