"""Read-only snapshots: consistent copy, views, Parquet by day, atomic replacement."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from addons.store import snapshot as snapshot_mod
from addons.store.snapshot import write_snapshot
from addons.store.views import VIEW_NAMES
from tests.seed import SeedSummary, seed


def _seeded_file(tmp_path: Path) -> tuple[duckdb.DuckDBPyConnection, SeedSummary]:
    conn = duckdb.connect(str(tmp_path / "live.duckdb"))
    return conn, seed(conn, days=5)


def _count(path: Path, table: str) -> int:
    with duckdb.connect(str(path), read_only=True) as ro:
        return ro.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]


def test_snapshot_is_a_readable_copy_with_views(tmp_path: Path) -> None:
    conn, s = _seeded_file(tmp_path)
    out = tmp_path / "snap"
    path = write_snapshot(conn, out)
    assert path == out / "aibridge.duckdb"
    with duckdb.connect(str(path), read_only=True) as ro:
        assert ro.execute("SELECT count(*) FROM aibridge_interceptions").fetchone() == (s.interceptions,)
        views = {r[0] for r in ro.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert set(VIEW_NAMES) <= views
        cost = ro.execute("SELECT sum(cost_usd) FROM aibridge_usage_daily").fetchone()[0]  # type: ignore[index]
        assert cost == pytest.approx(s.cost_usd)
        hashes = ro.execute("SELECT DISTINCT key_hash LIKE 'redacted:%' FROM api_keys").fetchall()
        assert hashes == [(True,)]
    # the live database keeps its real hashes and is still writable through the same connection
    assert conn.execute("SELECT count(*) FROM api_keys WHERE key_hash LIKE 'redacted:%'").fetchone() == (0,)
    conn.execute("INSERT INTO aigw_schema VALUES (1)")
    assert sorted(p.name for p in out.iterdir()) == ["aibridge.duckdb", "parquet"]  # no temp files left


def test_parquet_partitioned_by_day(tmp_path: Path) -> None:
    conn, s = _seeded_file(tmp_path)
    out = tmp_path / "snap"
    write_snapshot(conn, out)
    inter = out / "parquet" / "aibridge_interceptions"
    days = sorted(p.name for p in inter.iterdir())
    assert days == [f"day={d.isoformat()}" for d in sorted(s.requests_by_day)]
    assert all(list(p.glob("*.parquet")) for p in inter.iterdir())
    glob = str(inter / "*" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT day, count(*) FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY day"
    ).fetchall()
    assert {d: n for d, n in rows} == dict(s.requests_by_day)
    tokens = str(out / "parquet" / "aibridge_token_usages" / "*" / "*.parquet")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{tokens}')").fetchone() == (s.token_rows,)
    assert (out / "parquet" / "aigw_schema" / "data.parquet").exists()  # no time column: one file
    for table in ("users", "api_keys", "aibridge_user_prompts", "aibridge_tool_usages", "aibridge_model_thoughts"):
        assert any((out / "parquet" / table).glob("day=*/*.parquet")), table


def test_parquet_can_be_skipped(tmp_path: Path) -> None:
    conn, _ = _seeded_file(tmp_path)
    write_snapshot(conn, tmp_path / "snap", parquet=False)
    assert not (tmp_path / "snap" / "parquet").exists()


def test_refresh_replaces_previous_snapshot(tmp_path: Path) -> None:
    conn, s = _seeded_file(tmp_path)
    out = tmp_path / "snap"
    path = write_snapshot(conn, out)
    reader = duckdb.connect(str(path), read_only=True)  # an external tool holding the old file open
    _add_interceptions(conn, 3)
    write_snapshot(conn, out)
    # the open reader keeps its consistent (old) view; a new connection sees the refresh
    assert reader.execute("SELECT count(*) FROM aibridge_interceptions").fetchone() == (s.interceptions,)
    reader.close()  # duckdb caches open databases per path inside one process
    assert _count(path, "aibridge_interceptions") == s.interceptions + 3


@pytest.mark.parametrize("stage", ["_export_parquet", "_ensure_views", "_redact", "_swap_in", "_publish_db"])
def test_failed_snapshot_leaves_previous_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    conn, s = _seeded_file(tmp_path)
    out = tmp_path / "snap"
    path = write_snapshot(conn, out)
    parquet_before = sorted(str(p.relative_to(out)) for p in (out / "parquet").rglob("*"))
    _add_interceptions(conn, 2)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(snapshot_mod, stage, boom)
    with pytest.raises(OSError, match="simulated"):
        write_snapshot(conn, out)
    assert _count(path, "aibridge_interceptions") == s.interceptions  # the previous one, still valid
    assert sorted(str(p.relative_to(out)) for p in (out / "parquet").rglob("*")) == parquet_before
    assert sorted(p.name for p in out.iterdir()) == ["aibridge.duckdb", "parquet"]  # temp files cleaned
    assert conn.execute("SELECT current_database()").fetchone() == ("live",)  # caller's state untouched
    monkeypatch.undo()
    write_snapshot(conn, out)
    assert _count(path, "aibridge_interceptions") == s.interceptions + 2


def test_snapshot_while_another_thread_writes(tmp_path: Path) -> None:
    """Each writer transaction adds an interception and its token row; every snapshot must see pairs."""
    conn, _ = _seeded_file(tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        cur = conn.cursor()
        try:
            while not stop.is_set():
                cur.execute("BEGIN TRANSACTION")
                _add_interceptions(cur, 1, with_tokens=True)
                cur.execute("COMMIT")
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        counts = []
        for _ in range(5):
            path = write_snapshot(conn, tmp_path / "snap")
            with duckdb.connect(str(path), read_only=True) as ro:
                pairs = ro.execute(
                    "SELECT count(*) FROM aibridge_interceptions i WHERE i.provider_name = 'concurrent' "
                    "AND NOT EXISTS (SELECT 1 FROM aibridge_token_usages t WHERE t.interception_id = i.id)"
                ).fetchone()
                assert pairs == (0,)
                counts.append(ro.execute("SELECT count(*) FROM aibridge_token_usages").fetchone()[0])  # type: ignore[index]
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert counts == sorted(counts) and counts[-1] > counts[0]


def _add_interceptions(conn: duckdb.DuckDBPyConnection, n: int, *, with_tokens: bool = False) -> None:
    now = datetime.now(UTC) - timedelta(hours=1)
    user = conn.execute("SELECT id FROM users LIMIT 1").fetchone()[0]  # type: ignore[index]
    for _ in range(n):
        iid = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO aibridge_interceptions (id, initiator_id, provider, provider_name, model, client, "
            "credential_kind, started_at, ended_at, status) VALUES (?, ?, 'openai', 'concurrent', 'gpt-4.1', "
            "'Codex', 'centralized', ?, ?, 'completed')",
            [iid, user, now, now],
        )
        if with_tokens:
            conn.execute(
                "INSERT INTO aibridge_token_usages (interception_id, input_tokens, output_tokens, created_at, "
                "cost_usd) VALUES (?, 10, 10, ?, 0.001)",
                [iid, now],
            )
