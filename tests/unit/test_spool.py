"""The recorder's spool (addons/store/spool.py) and the writer's failure path: spool, retry, reopen, replay.

Database failures here are real DuckDB errors: a table that is missing (dropped by another cursor,
then restored) or the writer's connection closed under it (which needs a reopen). The file-size and
disk faults against the real gateway are in tests/faults/.
"""

from __future__ import annotations

import logging
import shutil
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from addons.flow.records import InterceptionEnd, PromptRecord, ThoughtRecord
from addons.store.db import connect
from addons.store.recovery import RECOVERED_ERROR
from addons.store.spool import MARKER_TABLE, SUFFIX, Spool, spool_dir
from addons.store.writer import RecordWriter
from tests.unit.test_store_writer import T0, count, end, prompt, start, token, tool, uid

TOKENS_DDL = (
    "CREATE TABLE aibridge_token_usages (interception_id UUID NOT NULL, provider_response_id VARCHAR, "
    "input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, cache_read_input_tokens BIGINT NOT NULL "
    "DEFAULT 0, cache_write_input_tokens BIGINT NOT NULL DEFAULT 0, metadata JSON, created_at TIMESTAMPTZ "
    "NOT NULL, cost_usd DOUBLE)"
)


def wait_for(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def dbpath(tmp_path: Path) -> Path:
    return tmp_path / "data" / "aibridge.duckdb"


@pytest.fixture
def db(dbpath: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = connect(dbpath)
    yield conn
    conn.close()


@pytest.fixture
def spool(dbpath: Path) -> Spool:
    s = Spool(spool_dir(dbpath))
    s.open()
    return s


def interception_set(iids: list[str]) -> list[Any]:
    """Start, prompt, tokens, tool call and end of each interception (5 records each)."""
    out: list[Any] = []
    for i, iid in enumerate(iids):
        out += [start(iid), prompt(iid), token(iid), tool(iid, f"call-{iid}-{i}"), end(iid)]
    return out


def break_tokens(db: duckdb.DuckDBPyConnection) -> None:
    db.execute("DROP TABLE aibridge_token_usages")


def repair_tokens(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(TOKENS_DDL)


# -- the file format -------------------------------------------------------------------


def test_batches_round_trip_private_and_in_order(spool: Spool, dbpath: Path) -> None:
    iid = uid()
    first = [start(iid, meta={"tags": {"a"}, "raw": b"bytes", "when": T0}), prompt(iid), token(iid),
             tool(iid, "c1"), ThoughtRecord(iid, "thinking…", {"source": "thinking"}, T0),
             InterceptionEnd(iid, T0 + timedelta(seconds=1), "completed", {"response_id": "msg_1"},
                             first_chunk_at=T0 + timedelta(milliseconds=300), finish_reasons=("end_turn",))]
    spool.append(first)
    spool.append([end(uid())])
    assert len(spool) == 2 and spool.records == 7
    directory = spool_dir(dbpath)
    assert directory == dbpath.with_name("aibridge.duckdb.spool")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(directory.iterdir())
    assert [f.suffix for f in files] == [SUFFIX, SUFFIX]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)

    batch = spool.oldest()
    assert batch is not None and batch.path == files[0] and batch.unreadable == 0
    assert [type(r) for r in batch.records] == [type(r) for r in first]
    decoded = batch.records
    assert decoded[0].metadata == {"tags": ["a"], "raw": "bytes", "when": "2025-03-01T12:00:00.123456+00:00"}
    assert decoded[0].started_at == T0 and decoded[0].started_at.tzinfo is not None
    assert [decoded[1], decoded[3], decoded[4]] == [first[1], first[3], first[4]]
    assert decoded[2].created_at == T0 and decoded[2].input_tokens == 1200
    assert decoded[2].metadata == {"cache_5m": 800, "at": "2025-03-01T12:00:00.123456+00:00"}
    assert decoded[5] == first[5]
    spool.remove(batch)
    assert len(spool) == 1 and spool.records == 1 and not files[0].exists()


def test_open_resumes_order_and_cleans_up(dbpath: Path) -> None:
    s = Spool(spool_dir(dbpath))
    s.open()
    ids = [uid() for _ in range(12)]
    for iid in ids:
        s.append([start(iid)])
    # A batch the process was writing when it died, and something else in the directory.
    (s.directory / "000000000099-deadbeef-3.tmp").write_bytes(b'["InterceptionStart", {"id"')
    (s.directory / "notes.batch").write_text("x")
    again = Spool(spool_dir(dbpath))
    again.open()
    assert not list(again.directory.glob("*.tmp"))
    assert len(again) == 12 and again.records == 12
    seen = []
    while (batch := again.oldest()) is not None:
        seen.append(batch.records[0].id)
        again.remove(batch)
    assert seen == ids  # numbered past 9 and still in order
    again.append([start(uid())])
    assert sorted(p.name for p in again.directory.glob("0*" + SUFFIX))[0].startswith("000000000012-")


def test_unreadable_lines_are_counted_not_fatal(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    iid = uid()
    spool.append([start(iid), end(iid)])
    path = next(spool.directory.glob("*" + SUFFIX))
    path.write_bytes(path.read_bytes() + b'["NoSuchRecord", {"prompt": "secret plans"}]\n{not json secret plans\n')
    caplog.set_level(logging.ERROR, "aigw.store")
    batch = spool.oldest()
    assert batch is not None
    assert [r.id for r in batch.records] == [iid, iid]  # type: ignore[union-attr]
    assert batch.unreadable == 2
    logged = [r.getMessage() for r in caplog.records]
    assert [m.split(": ", 1)[1] for m in logged] == [f"{path} line 3 (44 bytes, KeyError)",
                                                     f"{path} line 4 (22 bytes, JSONDecodeError)"]
    assert not any("secret" in m for m in logged)  # the lines hold prompt text: never logged


# -- the writer: spool while failing, replay in order ------------------------------------


def test_failing_writes_are_spooled_then_replayed_in_order(db: duckdb.DuckDBPyConnection, spool: Spool,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    failures: list[int] = []
    w = RecordWriter(db, flush_interval=0.02, spool=spool, retry_max=0.2)
    w.outage.on_failure = lambda: failures.append(1)
    w.start()
    before = [uid() for _ in range(3)]
    for r in interception_set(before):
        w.submit(r)
    assert w.flush()
    assert count(db, "aibridge_interceptions") == 3 and w.outage.reason is None

    break_tokens(db)
    during = [uid() for _ in range(20)]
    with caplog.at_level(logging.ERROR, logger="aigw.store"):
        for iid in during:
            w.submit(start(iid))
            w.submit(prompt(iid, text=None))  # type: ignore[arg-type]  # a record the DB refuses: NOT NULL
        assert w.flush()
        for iid in during:  # ends in later batches: they must follow their starts
            w.submit(token(iid))
            w.submit(end(iid, status="failed", meta={"response_id": "msg_1"}))
        assert w.flush()
        assert w.outage.reason is not None and "aibridge_token_usages" in w.outage.reason
        assert w.outage.spooled == 20 * 2  # the tokens and ends
    assert any("database write failed" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert count(db, "aibridge_interceptions") == 23  # the starts went in before the failure
    assert count(db, "aibridge_interceptions", "ended_at IS NULL") == 20
    assert failures

    repair_tokens(db)
    wait_for(lambda: w.outage.spooled == 0 and w.outage.reason is None, "the spool to drain")
    assert w.flush()
    assert count(db, "aibridge_interceptions") == 23
    assert count(db, "aibridge_interceptions", "status = 'failed'") == 20
    assert count(db, "aibridge_token_usages") == 20  # the table came back empty: only the replayed ones
    assert count(db, "aibridge_user_prompts") == 3  # the 20 NULL prompts were refused alone
    assert w.outage.dropped == 20
    assert not list(spool.directory.iterdir())
    assert db.execute(f"SELECT count(*) FROM {MARKER_TABLE}").fetchone() == (0,)
    w.close()


def test_closed_connection_is_reopened_and_nothing_is_lost(dbpath: Path, spool: Spool) -> None:
    conns = [connect(dbpath)]

    def reopen() -> duckdb.DuckDBPyConnection:
        conns[-1].close()
        conns.append(connect(dbpath))
        return conns[-1]

    w = RecordWriter(conns[0], flush_interval=0.02, spool=spool, reopen=reopen, retry_max=0.2)
    w.start()
    ids = [uid() for _ in range(10)]
    for r in interception_set(ids[:5]):
        w.submit(r)
    assert w.flush()
    conns[0].close()  # every cursor of it, the writer's too: "Connection already closed"
    for r in interception_set(ids[5:]):
        w.submit(r)
    assert w.flush()
    wait_for(lambda: len(conns) == 2 and w.outage.spooled == 0 and w.outage.reason is None, "reopen and replay")
    assert w.outage.failures >= 1 and w.outage.dropped == 0
    w.close()
    check = conns[-1]
    assert count(check, "aibridge_interceptions", "status = 'completed'") == 10
    for table in ("aibridge_token_usages", "aibridge_user_prompts", "aibridge_tool_usages"):
        assert count(check, table) == 10, table
    check.close()


def test_crash_mid_replay_never_duplicates(dbpath: Path, tmp_path: Path) -> None:
    db = connect(dbpath)
    spool = Spool(spool_dir(dbpath))
    spool.open()
    w = RecordWriter(db, flush_interval=0.02, spool=spool, retry_max=60)
    w.start()
    break_tokens(db)
    ids = [uid() for _ in range(6)]
    for i, iid in enumerate(ids):
        for r in interception_set([iid]):
            w.submit(r)
        if i % 2:
            assert w.flush()
    w.close()  # with the spool full: a clean stop keeps it
    repair_tokens(db)
    files = sorted(spool.directory.glob("*" + SUFFIX))
    assert len(files) >= 3
    saved = tmp_path / "saved"
    shutil.copytree(spool.directory, saved)

    # A run that replays everything...
    spool = Spool(spool_dir(dbpath))
    spool.open()
    w = RecordWriter(db, flush_interval=0.02, spool=spool)
    w.start()
    assert w.flush()
    wait_for(lambda: w.outage.spooled == 0, "the replay")
    w.close()
    assert count(db, "aibridge_interceptions") == 6 and count(db, "aibridge_token_usages") == 6

    # ...and the disk as a crash after the commits, before the files were removed, leaves it:
    # the files are back and the replay markers are still in the database.
    for f in saved.iterdir():
        shutil.copy2(f, spool.directory / f.name)
    batch_ids = sorted(f.name.split("-")[1] for f in files)
    db.execute(f"INSERT INTO {MARKER_TABLE} SELECT unnest(?::VARCHAR[]), now()", [batch_ids])
    # A replica sharing the (DuckLake) database is replaying a batch of its own: its marker stays.
    db.execute(f"INSERT INTO {MARKER_TABLE} VALUES ('another-replica-batch', now())")
    spool = Spool(spool_dir(dbpath))
    spool.open()
    assert spool.records == 30
    w = RecordWriter(db, flush_interval=0.02, spool=spool)
    w.start()
    wait_for(lambda: w.outage.spooled == 0, "the second replay")
    w.close()
    for table in ("aibridge_interceptions", "aibridge_token_usages", "aibridge_user_prompts",
                  "aibridge_tool_usages"):
        assert count(db, table) == 6, table
    assert db.execute(f"SELECT id FROM {MARKER_TABLE}").fetchall() == [("another-replica-batch",)]
    assert not list(spool.directory.iterdir())
    db.close()


def test_start_replays_then_ends_only_what_an_earlier_run_left_open(dbpath: Path) -> None:
    db = connect(dbpath)
    orphan, spooled, later = uid(), uid(), uid()
    w = RecordWriter(db, flush_interval=0.02)
    w.start()
    w.submit(start(orphan))  # the earlier run died with this one open
    w.close()
    spool = Spool(spool_dir(dbpath))
    spool.open()
    spool.append([start(spooled), PromptRecord(spooled, None, "the prompt", T0)])
    spool.append([end(spooled, meta={"response_id": "msg_9"})])

    boot = datetime.now(UTC)
    w = RecordWriter(db, flush_interval=0.02, spool=spool, recover_before=boot)
    w.start()
    w.submit(start(later, at=boot + timedelta(seconds=1)))
    assert w.flush()
    rows = dict(db.execute("SELECT id::VARCHAR, status FROM aibridge_interceptions").fetchall())
    assert rows == {orphan: "failed", spooled: "completed", later: None}
    assert db.execute("SELECT metadata->>'error' FROM aibridge_interceptions WHERE id = ?::UUID",
                      [orphan]).fetchone() == (RECOVERED_ERROR,)
    assert db.execute("SELECT provider_response_id FROM aibridge_user_prompts").fetchall() == [("msg_9",)]
    w.close()
    db.close()


def test_unwritable_spool_drops_with_error_and_metric(db: duckdb.DuckDBPyConnection, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool directory should be")
    spool = Spool(blocked)  # never opened: appending fails with ENOTDIR
    dropped: list[int] = []
    w = RecordWriter(db, flush_interval=0.02, spool=spool, retry_max=0.2)
    w.outage.on_dropped = dropped.append
    w.start()
    break_tokens(db)
    iid = uid()
    with caplog.at_level(logging.ERROR, logger="aigw.store"):
        w.submit(start(iid))
        w.submit(token(iid))
        assert w.flush()
    assert w.outage.dropped == 2 and sum(dropped) == 2
    assert any("dropped 2 records" in r.getMessage() and "cannot be written" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    repair_tokens(db)
    w.submit(start(uid()))
    assert w.flush()
    assert w.outage.reason is None and count(db, "aibridge_interceptions") == 1
    w.close()


def test_records_refused_only_together_with_others_are_found(db: duckdb.DuckDBPyConnection) -> None:
    w = RecordWriter(db, flush_interval=5)
    old, twice, new = uid(), uid(), uid()
    w.start()
    w.submit(start(old))
    assert w.flush()
    for r in (start(old), start(twice), prompt(twice), start(twice), start(new), end(new)):  # one batch
        w.submit(r)
    assert w.flush()
    w.close()
    assert w.outage.dropped == 2  # the start already in the database, the second start of `twice`
    assert count(db, "aibridge_interceptions") == 3
    assert count(db, "aibridge_interceptions", "status = 'completed'") == 1
    assert count(db, "aibridge_user_prompts") == 1


def test_refused_records_are_logged_without_their_values(db: duckdb.DuckDBPyConnection,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """DuckDB's errors quote bound values (here text where a time belongs): never logged."""
    w = RecordWriter(db, flush_interval=5)
    w.start()
    iid = uid()
    with caplog.at_level(logging.ERROR, logger="aigw.store"):
        bad = PromptRecord(interception_id=iid, provider_response_id="msg_1", prompt="secret plans",
                           created_at="secret plans")  # type: ignore[arg-type]
        for r in (start(iid), bad, end(iid)):
            w.submit(r)
        assert w.flush()
        w.close()
    assert w.outage.dropped == 1 and count(db, "aibridge_interceptions", "status = 'completed'") == 1
    logged = [r.getMessage() for r in caplog.records]
    assert f"dropped PromptRecord for interception {iid} (ConversionException)" in logged, logged
    assert not any("secret" in m for m in logged), logged
