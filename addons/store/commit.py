"""One batch, one transaction, on the writer thread's cursor.

A commit that loses to another replica's on a shared lake (a conflict) is simply
run again. A batch the database refuses because of its data (a bug) is retried in
groups; dry runs (rolled back) find the refused records, which are dropped alone
(ERROR log, dropped count), and the rest is written in one transaction, so a
spool batch is still written once, with its replay marker.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import duckdb

from addons.flow.records import Record
from addons.store import spool as spooling
from addons.store.batch import BatchPlanner
from addons.store.lake import is_conflict
from addons.store.spool import Outage, is_data_error

log = logging.getLogger("aigw.store")

CONFLICT_RETRIES = 50  # a batch's commit losing to another replica's is simply run again
_RETRY_GROUP = 128


class Committer:
    """Writes batches planned by `planner`; failures go to `outage`; counts what it committed."""

    def __init__(self, planner: BatchPlanner, outage: Outage) -> None:
        self.planner = planner
        self.outage = outage
        self.cur: duckdb.DuckDBPyConnection | None = None  # None: the database is not open
        self.on_batch: Callable[[int, float], None] | None = None
        self.rows_written = 0
        self.batches = 0
        self.last_flush_seconds = 0.0
        self._markers_ready = False

    def use(self, cur: duckdb.DuckDBPyConnection | None) -> None:
        """Write on `cur` from now on (a reopened database may have lost the marker table)."""
        self.cur = cur
        self._markers_ready = False

    def rollback_quietly(self) -> None:
        try:
            assert self.cur is not None
            self.cur.execute("ROLLBACK")
        except Exception:
            pass  # no transaction was open

    def write(self, records: list[Record], marker: str | None = None) -> bool:
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
        kept, exc = self._sift(group, lambda _: [])
        if exc is not None:
            return [], exc
        exc = self._attempt(accepted + kept, dry_run=True)
        if exc is None or not is_data_error(exc):
            return kept, exc
        return self._sift(kept, lambda together: [*accepted, *together])

    def _sift(self, records: list[Record], before: Callable[[list[Record]], list[Record]],
              ) -> tuple[list[Record], Exception | None]:
        """Dry-run each record after `before(the records kept so far)`; drop those refused. An error
        that is not about the data (the database failing) ends it."""
        kept: list[Record] = []
        for record in records:
            exc = self._attempt([*before(kept), record], dry_run=True)
            if exc is None:
                kept.append(record)
            elif not is_data_error(exc):
                return [], exc
            else:
                self._refused(record, exc)
        return kept, None

    def _refused(self, record: Record, exc: Exception) -> None:
        log.error("dropped %s for interception %s (%s)", type(record).__name__,
                  getattr(record, "interception_id", getattr(record, "id", "?")), type(exc).__name__)
        self.outage.drop(1)

    def _attempt(self, records: list[Record], marker: str | None = None,
                 dry_run: bool = False) -> Exception | None:
        """One transaction; returns what failed, if anything. A marker already recorded: nothing to do."""
        cur = self.cur
        if cur is None:
            return duckdb.ConnectionException(f"the database is not open ({self.outage.reason})")
        started = time.perf_counter()
        try:
            plan = self.planner.plan(records, cur)
            if marker is not None and not self._markers_ready:
                spooling.ensure_marker_table(cur)
                self._markers_ready = True
            for attempt in range(CONFLICT_RETRIES + 1):
                cur.execute("BEGIN")
                try:
                    if marker is not None and spooling.replayed(cur, marker):
                        cur.execute("ROLLBACK")
                        return None
                    plan.execute(cur)
                    if marker is not None:
                        spooling.mark_replayed(cur, marker)
                    cur.execute("ROLLBACK" if dry_run else "COMMIT")
                    break
                except BaseException as exc:
                    self.rollback_quietly()
                    # A lake: another replica committed into the same table first; nothing was written.
                    if not is_conflict(exc) or attempt == CONFLICT_RETRIES:
                        raise
                time.sleep(random.uniform(0.005, 0.05))
        except Exception as exc:
            return exc
        if not dry_run:
            self.planner.committed(plan)
            self._count(len(records), time.perf_counter() - started)
        return None

    def _count(self, rows: int, elapsed: float) -> None:
        self.rows_written += rows
        self.batches += 1
        self.last_flush_seconds = elapsed
        self.outage.recovered()
        hook = self.on_batch
        if hook is not None:
            try:
                hook(rows, elapsed)
            except Exception:
                log.exception("on_batch hook failed")
