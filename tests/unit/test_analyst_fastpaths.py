"""The analysts' fast paths give exactly what the straightforward SQL gives.

The report (daily rollup plus base tables) is compared, as rendered HTML, with
one computed by aggregating per-interception facts of the whole window directly;
`list_sessions` (recent sessions first, then their summaries) with grouping every
interception. The database is scripts/analysts_db.py's generator plus edge cases:
sessions spanning midnight UTC, threads across days, an unpriced model, a
half-priced interception, failed, cancelled and still-open interceptions, one
without any token row or model, a user without a users row, a non-UTC session
TimeZone, days deleted after they were rolled up, and a read-only connection.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from addons.pricing.pricer import Pricer
from addons.pricing.queries import reprice
from addons.reports import audit
from addons.reports import html as report
from addons.reports.filters import Filters, conditions
from addons.reports.report_data import ReportData
from addons.store import rollup
from addons.store.views import interception_facts_sql, session_summary_sql
from tests.seed import seed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from analysts_db import generate

END = datetime(2026, 3, 10, 14, 30, tzinfo=UTC)
WINDOWS = (
    (END - timedelta(days=30), END),
    (END - timedelta(days=7, hours=5), END - timedelta(days=2, hours=3)),
    (datetime(2026, 2, 20, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),  # whole days only
    (END - timedelta(days=400), END),
    (END - timedelta(hours=6), END),
)


def _edge_cases(conn: duckdb.DuckDBPyConnection) -> None:
    """Rows the generator does not make, added with plain SQL."""
    ghost = str(uuid.uuid4())  # an initiator without a users row
    day = END - timedelta(days=12, hours=1)
    open_day = END - timedelta(days=3, hours=2)
    rows = [
        # half-priced: one priced and one unpriced response (cost must be NULL for it)
        (str(uuid.uuid4()), ghost, "anthropic", "anthropic", "claude-sonnet-4-5", "Claude Code", "edge-1", day,
         day + timedelta(seconds=3), "completed", [(100, 0.5), (200, None)]),
        # no token row at all, no model, failed
        (str(uuid.uuid4()), ghost, "openai", "openai", None, "Codex", None, day + timedelta(minutes=5), day
         + timedelta(minutes=5, seconds=1), "failed", []),
        # still open: its day must not be served from the rollup
        (str(uuid.uuid4()), ghost, "openai", "openai", "gpt-5", "Codex", "edge-2", open_day, None, None,
         [(50, 0.1)]),
        # spans midnight UTC, same session on both days
        (str(uuid.uuid4()), ghost, "openai", "openai", "gpt-5", "Codex", "edge-3",
         datetime(2026, 3, 5, 23, 59, 59, tzinfo=UTC), datetime(2026, 3, 6, 0, 0, 9, tzinfo=UTC), "cancelled",
         [(70, 0.2)]),
        (str(uuid.uuid4()), ghost, "openai", "openai", "gpt-5", "Codex", "edge-3",
         datetime(2026, 3, 6, 0, 0, 10, tzinfo=UTC), datetime(2026, 3, 6, 0, 0, 12, tzinfo=UTC), "completed",
         [(80, 0.3)]),
    ]
    for iid, who, provider, name, model, client, session, start, end, status, tokens in rows:
        conn.execute(
            "INSERT INTO aibridge_interceptions (id, initiator_id, provider, provider_name, model, client, "
            "client_session_id, credential_kind, started_at, ended_at, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'gateway_key', ?, ?, ?)",
            [iid, who, provider, name, model, client, session, start, end, status],
        )
        for n, (tokens_in, cost) in enumerate(tokens):
            conn.execute(
                "INSERT INTO aibridge_token_usages (interception_id, provider_response_id, input_tokens, "
                "output_tokens, created_at, cost_usd) VALUES (?, ?, ?, 7, ?, ?)",
                [iid, f"r{n}", tokens_in, start, cost],
            )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("fast") / "aibridge.duckdb"
    conn = duckdb.connect(str(path))
    generate(conn, 12_000, days=60, end=END, unpriced=True)
    _edge_cases(conn)
    conn.close()
    yield path


# --------------------------------------------------------------------------- straightforward SQL


def reference_report(conn: duckdb.DuckDBPyConnection, since: datetime, now: datetime) -> str:
    """The report's data as one aggregation over per-interception facts of the window."""
    cur = conn.cursor()
    cur.execute(f"""
        CREATE OR REPLACE TEMP TABLE f AS
        WITH sel AS (SELECT * FROM aibridge_interceptions WHERE started_at >= ? AND started_at < ?),
        facts AS ({interception_facts_sql("sel")})
        SELECT * REPLACE (CAST(timezone('UTC', started_at) AS DATE) AS day) FROM facts
    """, [since, now])

    def rows(select: str) -> list[dict[str, Any]]:
        c = cur.execute(select)
        names = [d[0] for d in c.description or ()]
        return [dict(zip(names, r, strict=True)) for r in c.fetchall()]

    sums = """count(*) AS requests,
        count(*) FILTER (WHERE status = 'failed') AS failed,
        count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
        COALESCE(sum(input_tokens), 0)::BIGINT AS input_tokens,
        COALESCE(sum(output_tokens), 0)::BIGINT AS output_tokens,
        COALESCE(sum(cache_read_tokens), 0)::BIGINT AS cache_read_tokens,
        COALESCE(sum(cache_write_tokens), 0)::BIGINT AS cache_write_tokens,
        COALESCE(sum(total_tokens), 0)::BIGINT AS total_tokens,
        sum(cost_usd) AS cost_usd,
        COALESCE(sum(unpriced_responses), 0)::BIGINT AS unpriced_responses,
        COALESCE(sum(tool_calls), 0)::BIGINT AS tool_calls,
        COALESCE(sum(tool_errors), 0)::BIGINT AS tool_errors,
        count(DISTINCT initiator_id) AS users,
        count(DISTINCT session_id) AS sessions"""
    data = ReportData(
        since=since,
        now=now,
        totals=rows(f"SELECT {sums} FROM f")[0],
        by_day_model=rows("SELECT day, COALESCE(model, '(unknown)') AS model, sum(total_tokens)::BIGINT AS tokens, "
                          "COALESCE(sum(cost_usd), 0) AS cost FROM f GROUP BY ALL"),
        by_day=rows(f"SELECT day, {sums} FROM f GROUP BY day ORDER BY day"),
        by_model=rows(f"SELECT COALESCE(model, '(unknown)') AS model, "
                      f"string_agg(DISTINCT provider_name, ', ' ORDER BY provider_name) AS instances, {sums} "
                      "FROM f GROUP BY ALL ORDER BY total_tokens DESC, model"),
        by_user=rows(f"SELECT COALESCE(user_name, initiator_id::VARCHAR) AS name, {sums} "
                     "FROM f GROUP BY ALL ORDER BY cost_usd DESC NULLS LAST, total_tokens DESC, name"),
        by_client=rows(f"SELECT client AS name, {sums} FROM f GROUP BY ALL ORDER BY requests DESC, name"),
        tools=rows("SELECT t.tool, count(*) AS calls, count(t.invocation_error) AS errors, "
                   "count(*) FILTER (WHERE t.server_url IS NOT NULL) AS mcp_calls, "
                   "count(DISTINCT f.client) AS clients "
                   "FROM aibridge_tool_usages t JOIN f ON f.id = t.interception_id "
                   "GROUP BY t.tool ORDER BY calls DESC, t.tool"),
        unpriced=rows("SELECT provider, COALESCE(model, '(unknown)') AS model, count(*) AS requests, "
                      "sum(total_tokens)::BIGINT AS tokens FROM f WHERE unpriced_responses > 0 "
                      "GROUP BY ALL ORDER BY tokens DESC"),
    )
    cur.close()
    return report._render(data)


def reference_sessions(conn: duckdb.DuckDBPyConnection, f: Filters, limit: int) -> list[dict[str, Any]]:
    """Every interception grouped into sessions, then sorted and cut."""
    cond, params = conditions(f)
    where = f"WHERE {' AND '.join(cond)}" if cond else ""
    sql = f"""
        WITH sel AS (SELECT i.* FROM aibridge_interceptions i LEFT JOIN users u ON u.id = i.initiator_id {where}),
        facts AS ({interception_facts_sql("sel")})
        SELECT {audit._TS_REPLACE} FROM ({session_summary_sql("facts")})
        ORDER BY ended_at DESC, session_id DESC, initiator_id LIMIT ?
    """
    out = []
    for r in audit._dicts(conn.cursor().execute(sql, [*params, limit])):
        r["user"] = r.pop("user_name")
        out.append({k: audit._jsonable(r[k]) for k in audit._SESSION_FIELDS})
    return out


# --------------------------------------------------------------------------- report


def _rolled_days(conn: duckdb.DuckDBPyConnection) -> int:
    return conn.execute("SELECT count(*) FROM aigw_rollup_days").fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize("since,now", WINDOWS)
def test_report_equals_direct_aggregation(db: Path, since: datetime, now: datetime) -> None:
    conn = duckdb.connect(str(db))
    try:
        conn.execute("SET TimeZone = 'America/New_York'")  # UTC days must not depend on it
        expected = reference_report(conn, since, now)
        assert report.render_report(conn, since, now) == expected  # rolls closed days up
        assert report.render_report(conn, since, now) == expected  # served from the rollup
    finally:
        conn.close()


def test_rollup_covers_closed_days_only_and_heals(db: Path) -> None:
    conn = duckdb.connect(str(db))
    try:
        since, now = WINDOWS[0]
        rollup.invalidate(conn)
        report.render_report(conn, since, now)
        open_day = (END - timedelta(days=3, hours=2)).date()
        days = {d for (d,) in conn.execute("SELECT day FROM aigw_rollup_days").fetchall()}
        assert days and open_day not in days  # a day with an open interception is computed each time
        assert (since.date() + timedelta(days=1)) in days and since.date() not in days  # partial day
        # Retention deletes a rolled-up day's rows: the next report notices and recomputes.
        gone = sorted(days)[3]
        conn.execute("DELETE FROM aibridge_interceptions WHERE CAST(timezone('UTC', started_at) AS DATE) = ? "
                     "AND hash(id) % 2 = 0", [gone])
        assert report.render_report(conn, since, now) == reference_report(conn, since, now)
        # A reprice changes costs in place and makes the rollup start over.
        conn.execute("UPDATE aibridge_token_usages SET cost_usd = NULL WHERE input_tokens % 3 = 0 "
                     "AND interception_id IN (SELECT id FROM aibridge_interceptions WHERE model = 'gpt-5')")
        assert reprice(conn, Pricer()) > 0
        assert _rolled_days(conn) == 0
        assert report.render_report(conn, since, now) == reference_report(conn, since, now)
        assert _rolled_days(conn) > 0
    finally:
        conn.close()


def test_refresh_rolls_up_every_closed_day(db: Path) -> None:
    conn = duckdb.connect(str(db))
    try:
        rollup.invalidate(conn)
        rollup.refresh(conn)
        closed = {d for (d,) in conn.execute(
            "SELECT CAST(timezone('UTC', started_at) AS DATE) AS d FROM aibridge_interceptions "
            "GROUP BY d HAVING count(*) = count(ended_at)").fetchall()}
        rolled = {d for (d,) in conn.execute("SELECT day FROM aigw_rollup_days").fetchall()}
        assert rolled == closed and (END - timedelta(days=3, hours=2)).date() not in rolled
        assert rollup.refresh(conn) == len(closed)  # nothing left to do, nothing changes
        assert {d for (d,) in conn.execute("SELECT day FROM aigw_rollup_days").fetchall()} == rolled
        # Retention purges the oldest day: its rollup goes too.
        oldest = min(rolled)
        conn.execute("DELETE FROM aibridge_interceptions WHERE CAST(timezone('UTC', started_at) AS DATE) = ?",
                     [oldest])
        assert rollup.refresh(conn) == len(closed) - 1
        for table in rollup.ROLLUP_TABLES:
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE day = ?", [oldest]).fetchone() == (0,)
    finally:
        conn.close()


def test_concurrent_reports_and_refresh_roll_each_day_up_once(db: Path) -> None:
    conn = duckdb.connect(str(db))
    try:
        rollup.invalidate(conn)
        since, now = WINDOWS[0]
        expected = reference_report(conn, since, now)
        with ThreadPoolExecutor(3) as pool:
            reports = [pool.submit(report.render_report, conn, since, now) for _ in range(2)]
            refreshed = pool.submit(rollup.refresh, conn)
            assert [r.result() for r in reports] == [expected, expected]
            refreshed.result()
        dupes = conn.execute("""
            SELECT (SELECT count(*) - count(DISTINCT day) FROM aigw_rollup_days),
                   (SELECT count(*) FROM (SELECT count(*) AS n FROM aigw_rollup_usage
                                          GROUP BY day, initiator_id, provider, provider_name, model, client)
                    WHERE n > 1)""").fetchone()
        assert dupes == (0, 0)
        assert report.render_report(conn, since, now) == expected
    finally:
        conn.close()


def test_read_only_connection_uses_what_is_rolled_up_and_computes_the_rest(db: Path) -> None:
    conn = duckdb.connect(str(db))
    report.render_report(conn, *WINDOWS[1])  # rolls up part of the month only
    conn.close()
    conn = duckdb.connect(str(db), read_only=True)
    try:
        for since, now in WINDOWS:
            assert report.render_report(conn, since, now) == reference_report(conn, since, now)
    finally:
        conn.close()


def test_report_on_the_seed_data_with_and_without_rollup_tables() -> None:
    conn = duckdb.connect()
    try:
        s = seed(conn)
        windows = ((s.start, s.end), (s.end - timedelta(days=400), s.end), (s.end - timedelta(days=3), s.end))
        for since, now in windows:
            assert report.render_report(conn, since, now) == reference_report(conn, since, now)
        for table in rollup.ROLLUP_TABLES:  # a database from before the rollup existed
            conn.execute(f"DROP TABLE {table}")
        for since, now in windows:
            assert report.render_report(conn, since, now) == reference_report(conn, since, now)
    finally:
        conn.close()


# --------------------------------------------------------------------------- sessions


def _strip_ties(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows in a canonical order, costs to 12 significant digits.

    (ended_at, session_id) ties between two users' sessions have no defined order in
    either path, and a sum of doubles may differ in its last bit with the order in
    which DuckDB's threads add them up (also from one run of the same query to the next).
    """
    def canon(r: dict[str, Any]) -> str:
        return repr({k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in r.items()})

    return sorted((r["ended_at"], r["session_id"], r["initiator_id"], canon(r)) for r in rows)


@pytest.mark.parametrize("filters", [
    Filters(),
    Filters(user="user007"),
    Filters(model="gpt-5*"),
    Filters(client="copilot"),
    Filters(status="failed"),
    Filters(since=END - timedelta(days=2, hours=7), until=END - timedelta(days=1)),
    Filters(since=END + timedelta(days=1)),  # nothing
], ids=["all", "user", "model-glob", "client", "failed", "window", "empty"])
@pytest.mark.parametrize("limit", [1, 7, 50, 1000])
def test_sessions_equal_grouping_everything(db: Path, filters: Filters, limit: int) -> None:
    conn = duckdb.connect(str(db), read_only=True)
    try:
        fast = audit.list_sessions(conn, filters, limit)
        expected = reference_sessions(conn, filters, limit)
        assert len(fast) == len(expected)
        assert _strip_ties(fast) == _strip_ties(expected)
    finally:
        conn.close()


def test_sessions_on_the_seed_data(seeded: tuple[duckdb.DuckDBPyConnection, Any]) -> None:
    conn, _ = seeded
    for limit in (1, 3, 1000):
        assert _strip_ties(audit.list_sessions(conn, Filters(), limit)) == _strip_ties(
            reference_sessions(conn, Filters(), limit))


# --------------------------------------------------------------------------- CLI limits


def test_cli_reads_open_duckdb_with_the_configured_limits(db: Path, tmp_path: Path) -> None:
    from tests.gateway_process import aigw, clean_env

    sql = "select current_setting('memory_limit') as m, current_setting('threads') as t"
    env = clean_env(CODER_AIBRIDGE_DB=str(db))
    default = aigw(["query", sql, "--format", "json"], env, tmp_path)
    assert json.loads(default.stdout)[0]["m"] == "1.0 GiB"
    env.update(CODER_AIBRIDGE_ANALYTICS_MEMORY_LIMIT="300MiB", CODER_AIBRIDGE_ANALYTICS_THREADS="1")
    limited = aigw(["query", sql, "--format", "json"], env, tmp_path)
    assert json.loads(limited.stdout) == [{"m": "300.0 MiB", "t": 1}]
    bad = aigw(["query", sql], {**env, "CODER_AIBRIDGE_ANALYTICS_THREADS": "lots"}, tmp_path, check=False)
    assert bad.returncode != 0 and "CODER_AIBRIDGE_ANALYTICS_THREADS" in bad.stderr
