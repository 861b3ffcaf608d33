"""Retention (addons/chain/retention.py): what is purged, what never is, with an injected clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from addons.chain.retention import Retention, file_clock, purge, purge_batch
from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.store.db import connect
from addons.store.schema import CHILD_TABLES
from addons.store.writer import RecordWriter

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
USER = "0b6f5a1e-8d0c-4f7e-9a51-3f1e2c4d5e6f"


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[RecordWriter]:
    conn = connect(tmp_path / "db.duckdb")
    w = RecordWriter(conn, flush_interval=0.01)
    w.start()
    yield w
    w.close()
    conn.close()


def interception(w: RecordWriter, started: datetime, ended: datetime | None, children: bool = True) -> str:
    iid = str(uuid.uuid4())
    w.submit(InterceptionStart(
        id=iid, initiator_id=USER, api_key_id=None, provider="anthropic", provider_name="anthropic",
        model="m", client="Claude Code", client_session_id=None, credential_kind="centralized",
        credential_hint=None, started_at=started))
    if children:
        at = ended or started
        w.submit(TokenUsageRecord(iid, "msg_1", 1, 2, 3, 4, {}, at))
        w.submit(PromptRecord(iid, "msg_1", "hi", at))
        w.submit(ToolUsageRecord(iid, "msg_1", f"toolu_{iid}", "t", "{}", None, False, None, at))
        w.submit(ThoughtRecord(iid, "hmm", {"source": "thinking"}, at))
    if ended is not None:
        w.submit(InterceptionEnd(iid, ended, "completed"))
    return iid


def ids(w: RecordWriter) -> set[str]:
    return {r[0] for r in w.call(lambda c: c.execute("select id::varchar from aibridge_interceptions").fetchall())}


def child_ids(w: RecordWriter) -> dict[str, set[str]]:
    return {t: {r[0] for r in w.call(lambda c, t=t: c.execute(
        f"select interception_id::varchar from {t}").fetchall())} for t in CHILD_TABLES}


async def test_purges_ended_interceptions_with_all_their_rows(writer: RecordWriter) -> None:
    old = interception(writer, NOW - timedelta(days=90), NOW - timedelta(days=90) + timedelta(seconds=3))
    edge = interception(writer, NOW - timedelta(days=61), NOW - timedelta(days=59))  # ended inside the window
    recent = interception(writer, NOW - timedelta(hours=1), NOW - timedelta(minutes=59))
    open_old = interception(writer, NOW - timedelta(days=200), None)  # still in flight: never purged
    writer.flush()

    retention = Retention(timedelta(days=60), writer, now=lambda: NOW)
    assert await retention.run_once() == 1

    assert ids(writer) == {edge, recent, open_old}
    for table, found in child_ids(writer).items():
        assert old not in found, table
        assert found == {edge, recent, open_old}, table


async def test_injected_clock_moves_the_cutoff(writer: RecordWriter) -> None:
    clock = [NOW]
    a = interception(writer, NOW - timedelta(days=1), NOW - timedelta(days=1))
    b = interception(writer, NOW, None)
    writer.flush()
    retention = Retention(timedelta(days=60), writer, now=lambda: clock[0])
    assert await retention.run_once() == 0
    clock[0] = NOW + timedelta(days=60, hours=1)
    assert await retention.run_once() == 1
    assert ids(writer) == {b}  # open: kept however old
    writer.submit(InterceptionEnd(b, NOW + timedelta(seconds=5), "completed"))
    writer.flush()
    assert await retention.run_once() == 1
    assert ids(writer) == set()
    assert all(not found for found in child_ids(writer).values())
    assert a  # purged above


async def test_disabled_retention_keeps_everything(writer: RecordWriter) -> None:
    interception(writer, NOW - timedelta(days=900), NOW - timedelta(days=900))
    writer.flush()
    retention = Retention(None, writer, now=lambda: NOW)
    assert await retention.run_once() == 0
    retention.running()  # no task for "keep forever"
    assert retention.task is None
    assert len(ids(writer)) == 1


def test_purge_runs_in_batches_each_one_transaction(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.duckdb")
    w = RecordWriter(conn, flush_interval=0.01)
    w.start()
    try:
        for i in range(7):
            interception(w, NOW - timedelta(days=100, minutes=i), NOW - timedelta(days=100, minutes=i))
        w.flush()
        cutoff = NOW - timedelta(days=60)
        assert w.call(lambda c: purge_batch(c, cutoff, limit=3)) == 3
        assert len(ids(w)) == 4
        assert all(len(found) == 4 for found in child_ids(w).values())  # never partial
        assert w.call(lambda c: purge(c, cutoff, batch=3)) == 4
        assert ids(w) == set()
    finally:
        w.close()
        conn.close()


def test_failed_batch_rolls_back(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.duckdb")
    w = RecordWriter(conn, flush_interval=0.01)
    w.start()
    interception(w, NOW - timedelta(days=100), NOW - timedelta(days=100))
    w.flush()
    w.close()

    class Failing:
        """Delegates to DuckDB but fails the delete of the interceptions (after the children's)."""

        def __init__(self, real: duckdb.DuckDBPyConnection) -> None:
            self.real = real

        def execute(self, sql: str, params: object = None) -> duckdb.DuckDBPyConnection:
            if sql.startswith("DELETE FROM aibridge_interceptions"):
                raise duckdb.Error("disk full")
            return self.real.execute(sql, params) if params is not None else self.real.execute(sql)

    with pytest.raises(duckdb.Error):
        purge_batch(Failing(conn), NOW)  # type: ignore[arg-type]
    assert conn.execute("select count(*) from aibridge_token_usages").fetchone() == (1,)
    assert conn.execute("select count(*) from aibridge_interceptions").fetchone() == (1,)
    conn.close()


def test_orphaned_children_are_removed(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.duckdb")
    ghost = str(uuid.uuid4())
    conn.execute("insert into aibridge_user_prompts values (?, null, 'lost', ?)", [ghost, NOW - timedelta(days=90)])
    conn.execute("insert into aibridge_user_prompts values (?, null, 'new', ?)", [ghost, NOW])
    purge(conn, NOW - timedelta(days=60))
    assert conn.execute("select prompt from aibridge_user_prompts").fetchall() == [("new",)]
    conn.close()


def test_file_clock(tmp_path: Path) -> None:
    path = tmp_path / "now"
    path.write_text("2030-01-02T03:04:05Z")
    assert file_clock(path)() == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    path.write_text("garbage")
    assert abs(file_clock(path)() - datetime.now(UTC)) < timedelta(seconds=5)


async def test_each_batch_is_its_own_writer_call(writer: RecordWriter) -> None:
    for i in range(5):
        interception(writer, NOW - timedelta(days=100, minutes=i), NOW - timedelta(days=100, minutes=i))
    writer.flush()
    calls = 0
    real_call = writer.call

    def counting_call(fn, timeout=30.0):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real_call(fn, timeout)

    writer.call = counting_call  # type: ignore[method-assign]
    retention = Retention(timedelta(days=60), writer, now=lambda: NOW)
    retention.batch = 2
    assert await retention.run_once() == 5
    assert calls == 4  # batches of 2, 2, 1, then the orphan sweep
