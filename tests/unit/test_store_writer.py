"""The DuckDB record writer (addons/store/writer.py, batch.py, threads.py, commit.py) and connection helper (db.py)."""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.store import schema
from addons.store.batch import merge_patch
from addons.store.db import DatabaseLockedError, connect, utcnow
from addons.store.recovery import recover_open_interceptions
from addons.store.writer import RecordWriter

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
USER = "0b6f5a1e-8d0c-4f7e-9a51-3f1e2c4d5e6f"


def us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def uid() -> str:
    return str(uuid.uuid4())


def start(iid: str, *, at: datetime = T0, meta: dict[str, Any] | None = None, corr: str | None = None):
    return InterceptionStart(
        id=iid,
        initiator_id=USER,
        api_key_id="aigw_0123abcd",
        provider="anthropic",
        provider_name="anthropic",
        model="claude-sonnet-4-5",
        client="Claude Code",
        client_session_id="sess-1",
        credential_kind="centralized",
        credential_hint=None,
        started_at=at,
        metadata=meta if meta is not None else {"user_agent": "claude-cli/2.0", "username": "alice"},
        correlating_tool_call_id=corr,
    )


def end(iid: str, *, at: datetime = T0 + timedelta(seconds=2), status: str = "completed", meta=None):
    return InterceptionEnd(id=iid, ended_at=at, status=status, metadata=meta if meta is not None else {})


def tool(iid: str, call_id: str, *, at: Any = T0, name: str = "Bash") -> ToolUsageRecord:
    return ToolUsageRecord(
        interception_id=iid,
        provider_response_id="msg_1",
        provider_tool_call_id=call_id,
        tool=name,
        input='{"command": "ls \\"-la\\""}',
        server_url=None,
        injected=False,
        invocation_error=None,
        created_at=at,
    )


def token(iid: str) -> TokenUsageRecord:
    return TokenUsageRecord(
        interception_id=iid,
        provider_response_id="msg_1",
        input_tokens=1200,
        output_tokens=350,
        cache_read_input_tokens=40000,
        cache_write_input_tokens=800,
        metadata={"cache_5m": 800, "at": T0},
        created_at=T0,
        provider="anthropic",
        model="claude-sonnet-4-5",
    )


def prompt(iid: str, text: str = 'fix the test — ünïcode "quoted"\nline 2') -> PromptRecord:
    return PromptRecord(interception_id=iid, provider_response_id="msg_1", prompt=text, created_at=T0)


@pytest.fixture
def db(tmp_path: Path):
    conn = connect(tmp_path / "data" / "aibridge.duckdb")
    yield conn
    conn.close()


@pytest.fixture
def writer(db):
    w = RecordWriter(db, flush_interval=0.05)
    w.start()
    yield w
    w.close()


def count(conn, table: str, where: str = "true") -> int:
    return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


def interception(conn, iid: str) -> dict[str, Any]:
    cur = conn.execute(
        "SELECT id::VARCHAR AS id, initiator_id::VARCHAR AS initiator_id, api_key_id, provider, "
        "provider_name, model, client, client_session_id, thread_parent_id::VARCHAR AS thread_parent_id, "
        "thread_root_id::VARCHAR AS thread_root_id, credential_kind, credential_hint, "
        "epoch_us(started_at) AS started_us, epoch_us(ended_at) AS ended_us, status, metadata "
        "FROM aibridge_interceptions WHERE id = ?::UUID",
        [iid],
    )
    names = [d[0] for d in cur.description]
    row = cur.fetchone()
    assert row is not None, f"interception {iid} missing"
    out = dict(zip(names, row, strict=True))
    out["metadata"] = orjson.loads(out["metadata"]) if out["metadata"] is not None else None
    return out


# -- db.py ---------------------------------------------------------------------


def test_connect_creates_private_dir_and_file_and_schema(tmp_path: Path):
    path = tmp_path / "new" / "aibridge.duckdb"
    conn = connect(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert conn.execute("SELECT version FROM aigw_schema").fetchall() == [(schema.SCHEMA_VERSION,)]
    tables = {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert {"users", "api_keys", "aibridge_interceptions", *schema.CHILD_TABLES} <= tables
    conn.close()
    conn = connect(path)  # idempotent
    assert conn.execute("SELECT version FROM aigw_schema").fetchall() == [(schema.SCHEMA_VERSION,)]
    conn.close()
    ro = connect(path, read_only=True)
    assert count(ro, "aibridge_interceptions") == 0
    ro.close()


def test_connect_read_only_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        connect(tmp_path / "nope.duckdb", read_only=True)
    assert not (tmp_path / "nope.duckdb").exists()


def test_connect_locked_names_the_holder(tmp_path: Path):
    path = tmp_path / "locked.duckdb"
    connect(path).close()
    code = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(DatabaseLockedError) as info:
            connect(path)
        assert info.value.pid == proc.pid
        assert f"PID {proc.pid}" in str(info.value)
        assert str(path) in str(info.value)
        assert "locked by another process" in str(info.value)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def test_utcnow_is_aware():
    assert utcnow().utcoffset() == timedelta(0)


# -- writer --------------------------------------------------------------------


def test_mixed_records_from_several_threads(db, writer):
    per_thread, threads = 150, 4
    expected_tools = 0
    ids: list[list[str]] = [[] for _ in range(threads)]

    def produce(n: int) -> None:
        for i in range(per_thread):
            iid = uid()
            ids[n].append(iid)
            writer.submit(start(iid))
            writer.submit(token(iid))
            writer.submit(prompt(iid))
            for k in range(1 + i % 2):
                writer.submit(tool(iid, f"call-{n}-{i}-{k}"))
            writer.submit(ThoughtRecord(iid, "thinking about it", {"source": "thinking"}, T0))
            writer.submit(end(iid, meta={"http_status": 200}))

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    expected_tools = threads * sum(1 + i % 2 for i in range(per_thread))
    assert writer.flush()
    total = threads * per_thread
    assert count(db, "aibridge_interceptions") == total
    assert count(db, "aibridge_interceptions", "ended_at IS NULL OR status IS NULL") == 0
    assert count(db, "aibridge_token_usages") == total
    assert count(db, "aibridge_user_prompts") == total
    assert count(db, "aibridge_tool_usages") == expected_tools
    assert count(db, "aibridge_model_thoughts") == total
    assert writer.rows_written == total * 5 + expected_tools
    assert writer.queue_depth == 0
    assert writer.batches >= 1

    iid = ids[2][7]
    row = interception(db, iid)
    assert row == {
        "id": iid,
        "initiator_id": USER,
        "api_key_id": "aigw_0123abcd",
        "provider": "anthropic",
        "provider_name": "anthropic",
        "model": "claude-sonnet-4-5",
        "client": "Claude Code",
        "client_session_id": "sess-1",
        "thread_parent_id": None,
        "thread_root_id": None,
        "credential_kind": "centralized",
        "credential_hint": None,
        "started_us": us(T0),
        "ended_us": us(T0 + timedelta(seconds=2)),
        "status": "completed",
        "metadata": {"user_agent": "claude-cli/2.0", "username": "alice", "http_status": 200},
    }
    tok = db.execute(
        "SELECT provider_response_id, input_tokens, output_tokens, cache_read_input_tokens, "
        "cache_write_input_tokens, metadata, epoch_us(created_at), cost_usd "
        "FROM aibridge_token_usages WHERE interception_id = ?::UUID",
        [iid],
    ).fetchall()
    assert len(tok) == 1
    assert tok[0][:5] == ("msg_1", 1200, 350, 40000, 800)
    assert orjson.loads(tok[0][5]) == {"cache_5m": 800, "at": "2025-03-01T12:00:00.123456+00:00"}
    assert tok[0][6:] == (us(T0), None)
    assert db.execute("SELECT prompt FROM aibridge_user_prompts WHERE interception_id = ?::UUID", [iid]).fetchall() == [
        (prompt(iid).prompt,)
    ]
    tools = db.execute(
        "SELECT provider_tool_call_id, provider_item_id, tool, input, server_url, injected, invocation_error "
        "FROM aibridge_tool_usages WHERE interception_id = ?::UUID ORDER BY 1",
        [iid],
    ).fetchall()
    assert tools == [
        ("call-2-7-0", None, "Bash", '{"command": "ls \\"-la\\""}', None, False, None),
        ("call-2-7-1", None, "Bash", '{"command": "ls \\"-la\\""}', None, False, None),
    ]
    thought = db.execute(
        "SELECT content, metadata FROM aibridge_model_thoughts WHERE interception_id = ?::UUID", [iid]
    ).fetchone()
    assert thought[0] == "thinking about it" and orjson.loads(thought[1]) == {"source": "thinking"}


def test_start_and_end_in_one_batch_make_one_complete_row(db):
    w = RecordWriter(db, flush_interval=5)
    iid = uid()
    s = start(iid, meta={"a": 1, "nested": {"x": 1, "y": 2}})
    e = end(iid, status="failed", meta={"error": "boom", "nested": {"y": None, "z": 3}})
    plan = w._planner.plan([s, e], None)
    assert plan.ends == {}  # merged: no UPDATE needed
    assert len(plan.interceptions) == 1
    w.start()
    w.submit(s)
    w.submit(e)
    assert w.flush()
    assert w.batches == 1
    row = interception(db, iid)
    assert row["status"] == "failed"
    assert row["ended_us"] == us(T0 + timedelta(seconds=2))
    assert row["metadata"] == {"a": 1, "nested": {"x": 1, "z": 3}, "error": "boom"}
    w.close()


def test_end_in_later_batch_updates_and_merges_metadata(db, writer):
    a, b = uid(), uid()
    writer.submit(start(a, meta={"route": "/v1/messages", "nested": {"x": 1, "y": 2}, "drop": True}))
    writer.submit(start(b))
    assert writer.flush()
    row = interception(db, a)
    assert row["ended_us"] is None and row["status"] is None
    writer.submit(end(a, status="cancelled", meta={"http_status": 499, "nested": {"y": None}, "drop": None}))
    writer.submit(end(b, meta={"first": 1}))
    writer.submit(end(b, status="failed", meta={"second": 2}))  # two ends: applied in order
    assert writer.flush()
    row = interception(db, a)
    assert row["status"] == "cancelled"
    assert row["ended_us"] == us(T0 + timedelta(seconds=2))
    assert row["metadata"] == {"route": "/v1/messages", "nested": {"x": 1}, "http_status": 499}
    row_b = interception(db, b)
    assert row_b["status"] == "failed"
    assert row_b["metadata"]["first"] == 1 and row_b["metadata"]["second"] == 2


def test_merge_patch_matches_duckdb(db):
    target = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"}
    patch = {"a": None, "b": {"c": None, "f": {"g": 1}}, "e": {"h": 1}, "i": [3]}
    sql = db.execute(
        "SELECT json_merge_patch(?::JSON, ?::JSON)", [orjson.dumps(target).decode(), orjson.dumps(patch).decode()]
    )
    assert merge_patch(target, patch) == orjson.loads(sql.fetchone()[0])


def test_timestamps_keep_the_instant(db, writer):
    iid = uid()
    plus2 = timezone(timedelta(hours=2))
    at = datetime(2025, 6, 1, 14, 30, 0, 1, tzinfo=plus2)
    naive = datetime(2025, 6, 1, 12, 31, 0, 7)  # naive values are taken as UTC
    writer.submit(start(iid, at=at))
    writer.submit(end(iid, at=naive))
    assert writer.flush()
    row = interception(db, iid)
    assert row["started_us"] == us(at)
    assert row["ended_us"] == us(naive.replace(tzinfo=UTC))


def test_thread_linking_within_across_batches_and_after_reopen(tmp_path: Path):
    path = tmp_path / "t.duckdb"
    conn = connect(path)
    w = RecordWriter(conn, flush_interval=0.05)
    w.start()
    a, b, c = uid(), uid(), uid()
    w.submit(start(a))
    w.submit(tool(a, "call_a"))
    w.submit(end(a))
    assert w.flush()
    # b links to a across batches; c links to b within one batch.
    w.submit(start(b, corr="call_a"))
    w.submit(tool(b, "call_b"))
    w.submit(start(c, corr="call_b"))
    w.submit(tool(c, "call_c"))
    assert w.flush()
    w.close()
    assert (interception(conn, a)["thread_parent_id"], interception(conn, a)["thread_root_id"]) == (None, None)
    rb, rc = interception(conn, b), interception(conn, c)
    assert (rb["thread_parent_id"], rb["thread_root_id"]) == (a, a)
    assert (rc["thread_parent_id"], rc["thread_root_id"]) == (b, a)
    assert rb["metadata"]["correlating_tool_call_id"] == "call_a"
    conn.close()

    # A new process: the in-memory map is empty, so links come from the database.
    conn = connect(path)
    w = RecordWriter(conn, flush_interval=0.05)
    w.start()
    d, e, f = uid(), uid(), uid()
    w.submit(start(d, corr="call_c"))
    w.submit(start(e, corr="call_a"))
    w.submit(start(f, corr="call_unknown"))
    w.close()
    rd, re_, rf = interception(conn, d), interception(conn, e), interception(conn, f)
    assert (rd["thread_parent_id"], rd["thread_root_id"]) == (c, a)
    assert (re_["thread_parent_id"], re_["thread_root_id"]) == (a, a)
    assert (rf["thread_parent_id"], rf["thread_root_id"]) == (None, None)
    assert rf["metadata"]["correlating_tool_call_id"] == "call_unknown"
    conn.close()


def test_thread_links_survive_a_tiny_cache(db):
    # Two entries per map: parents are evicted by later tool-calling interceptions and come back
    # from the database; interceptions without tool calls never take a cache entry.
    w = RecordWriter(db, flush_interval=0.05, thread_map_size=2)
    w.start()
    a, b = uid(), uid()
    w.submit(start(a))
    w.submit(tool(a, "call_a"))
    w.submit(end(a))
    w.submit(start(b, corr="call_a"))
    w.submit(tool(b, "call_b"))
    w.submit(end(b))
    assert w.flush()
    for _ in range(5):
        n = uid()
        w.submit(start(n))
        w.submit(tool(n, f"call_{n}"))
        w.submit(end(n))
        plain = uid()
        w.submit(start(plain))
        w.submit(end(plain))
        assert w.flush()
    c, d = uid(), uid()
    w.submit(start(c, corr="call_b"))
    w.submit(start(d, corr="call_a"))
    w.close()
    rc, rd = interception(db, c), interception(db, d)
    assert (rc["thread_parent_id"], rc["thread_root_id"]) == (b, a)
    assert (rd["thread_parent_id"], rd["thread_root_id"]) == (a, a)


def test_call_runs_in_order_with_records(db, writer):
    iid = uid()
    writer.submit(start(iid))
    writer.submit(tool(iid, "x"))
    # No flush: call() must still see both rows, because it runs after them.
    n = writer.call(lambda cur: cur.execute("SELECT count(*) FROM aibridge_tool_usages").fetchone()[0])
    assert n == 1
    writer.call(lambda cur: cur.execute("DELETE FROM aibridge_tool_usages"))
    writer.submit(tool(iid, "y"))
    assert writer.flush()
    assert [r[0] for r in db.execute("SELECT provider_tool_call_id FROM aibridge_tool_usages").fetchall()] == ["y"]

    def boom(cur):
        cur.execute("BEGIN")
        cur.execute("DELETE FROM aibridge_interceptions")
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        writer.call(boom)
    # The failed call's open transaction was rolled back and the writer still works.
    writer.submit(tool(iid, "z"))
    assert writer.flush()
    assert count(db, "aibridge_interceptions") == 1
    assert count(db, "aibridge_tool_usages") == 2


def test_close_drains_everything_and_is_idempotent(db, caplog):
    w = RecordWriter(db, flush_interval=30, max_batch=100)
    w.start()
    ids = [uid() for _ in range(250)]
    for iid in ids:
        w.submit(start(iid))
        w.submit(prompt(iid))
        w.submit(end(iid))
    w.close()
    assert count(db, "aibridge_interceptions", "status = 'completed'") == 250
    assert count(db, "aibridge_user_prompts") == 250
    assert w.batches >= 8  # max_batch respected
    with caplog.at_level(logging.WARNING, logger="aigw.store"):
        w.submit(start(uid()))
        w.submit(start(uid()))
    assert sum("closed" in r.getMessage() for r in caplog.records) == 1
    w.close()
    assert count(db, "aibridge_interceptions") == 250
    with pytest.raises(RuntimeError):
        w.call(lambda cur: 1)


def test_close_without_start_still_drains(db):
    w = RecordWriter(db)
    iid = uid()
    w.submit(start(iid))
    w.close()
    assert count(db, "aibridge_interceptions") == 1


def test_bad_records_do_not_lose_the_rest_of_the_batch(db, caplog):
    w = RecordWriter(db, flush_interval=5)
    good = [uid() for _ in range(300)]
    bad_start = start("not-a-uuid")
    with caplog.at_level(logging.ERROR, logger="aigw.store"):
        w.start()
        for i, iid in enumerate(good):
            w.submit(start(iid))
            w.submit(tool(iid, f"c{i}"))
            if i == 150:
                w.submit(tool(iid, "bad", at="not a timestamp"))  # type: ignore[arg-type]
                w.submit(bad_start)
                w.submit({"not": "a record"})  # type: ignore[arg-type]
            w.submit(end(iid))
        assert w.flush()
    assert count(db, "aibridge_interceptions") == 300
    assert count(db, "aibridge_interceptions", "status = 'completed'") == 300
    assert count(db, "aibridge_tool_usages") == 300
    assert count(db, "aibridge_tool_usages", "provider_tool_call_id = 'bad'") == 0
    assert any("dropped ToolUsageRecord" in r.getMessage() for r in caplog.records)
    assert any("dropped InterceptionStart" in r.getMessage() for r in caplog.records)
    # The thread survived.
    iid = uid()
    w.submit(start(iid))
    w.close()
    assert count(db, "aibridge_interceptions") == 301


def test_on_batch_hook_and_price(db):
    seen: list[tuple[int, float]] = []
    w = RecordWriter(db, flush_interval=0.05, price=lambda r: 0.5 if r.model else None)
    w.on_batch = lambda rows, secs: seen.append((rows, secs))
    w.start()
    iid = uid()
    w.submit(start(iid))
    w.submit(token(iid))
    assert w.flush()
    w.close()
    assert sum(r for r, _ in seen) == 2
    assert all(s >= 0 for _, s in seen)
    assert w.last_flush_seconds >= 0
    assert db.execute("SELECT cost_usd FROM aibridge_token_usages").fetchall() == [(0.5,)]


def test_recover_open_interceptions(db, writer):
    open_ids = [uid(), uid()]
    done = uid()
    for iid in open_ids:
        writer.submit(start(iid, meta={"route": "/v1/messages"}))
    writer.submit(start(done))
    writer.submit(end(done))
    assert writer.flush()
    now = T0 + timedelta(minutes=5)
    assert writer.call(lambda cur: recover_open_interceptions(cur, now)) == 2
    for iid in open_ids:
        row = interception(db, iid)
        assert row["status"] == "failed"
        assert row["ended_us"] == us(now)
        assert row["metadata"] == {
            "route": "/v1/messages",
            "error": "gateway stopped before the interception ended",
        }
    assert interception(db, done)["status"] == "completed"
    assert recover_open_interceptions(db, now) == 0


def test_flush_before_start_reports_pending(db):
    w = RecordWriter(db)
    assert w.flush(timeout=0.1)
    w.submit(start(uid()))
    assert not w.flush(timeout=0.1)
    w.start()
    assert w.flush()
    w.close()
    assert count(db, "aibridge_interceptions") == 1


def test_prompt_recorded_at_start_gets_the_response_id_from_the_end(db, writer):
    same, later, none = uid(), uid(), uid()
    for iid in (same, later, none):
        writer.submit(start(iid))
        writer.submit(PromptRecord(iid, None, f"prompt of {iid}", T0))
    writer.submit(end(same, meta={"response_id": "msg_same"}))
    assert writer.flush()
    ids = "SELECT interception_id::VARCHAR, provider_response_id FROM aibridge_user_prompts"
    assert dict(db.execute(ids).fetchall()) == {same: "msg_same", later: None, none: None}
    writer.submit(end(later, meta={"response_id": "msg_later"}))  # a later batch: an UPDATE
    writer.submit(end(none, status="failed", meta={"error": "upstream answered HTTP 500"}))
    assert writer.flush()
    assert dict(db.execute(ids).fetchall()) == {same: "msg_same", later: "msg_later", none: None}
    assert len(writer._planner.open_prompts) == 0
