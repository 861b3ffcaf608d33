"""Analyst views against the independently computed seed aggregates."""

from __future__ import annotations

from collections import Counter, defaultdict

import duckdb
import pytest

from addons.store.schema import DDL
from addons.store.views import VIEW_NAMES, VIEWS, create_views
from tests.seed import UNKNOWN_MODEL, SeedSummary


def q(conn: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return conn.execute(sql).fetchall()


def test_views_are_idempotent_and_all_listed() -> None:
    conn = duckdb.connect()
    for statement in DDL:
        conn.execute(statement)
    create_views(conn)
    create_views(conn)
    names = {r[0] for r in q(conn, "SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    assert names == set(VIEW_NAMES)
    assert len(VIEWS) == len(VIEW_NAMES)
    for name in VIEW_NAMES:  # empty database: every view answers, with no rows
        assert q(conn, f"SELECT count(*) FROM {name}") == [(0,)]


def test_interceptions_view_totals(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    row = q(
        conn,
        "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), "
        "sum(cache_write_tokens), sum(reasoning_tokens), sum(total_tokens), sum(unpriced_responses), "
        "sum(tool_calls), sum(tool_errors), count(prompt), sum(thought_count) FROM aibridge_interceptions_v",
    )[0]
    assert row == (
        s.interceptions, s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens,
        s.reasoning_tokens, s.total_tokens, s.unpriced_rows, sum(s.tool_calls.values()),
        sum(s.tool_errors.values()), s.prompts, s.thoughts,
    )  # fmt: skip
    cost = q(conn, "SELECT sum(cost_usd) FROM aibridge_interceptions_v")[0][0]
    assert cost == pytest.approx(s.cost_usd, rel=1e-9)


def test_session_id_fallbacks(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, _ = seeded
    rows = q(
        conn,
        "SELECT client_session_id, thread_root_id::VARCHAR, id::VARCHAR, session_id FROM aibridge_interceptions_v",
    )
    kinds = Counter()
    for client_sid, root, iid, sid in rows:
        expected = client_sid or root or iid
        assert sid == expected
        kinds["client" if client_sid else "thread" if root else "self"] += 1
    assert all(kinds[k] > 0 for k in ("client", "thread", "self"))


def test_unknown_model_cost_is_null_not_zero(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    rows = q(
        conn,
        f"SELECT count(*), count(cost_usd) FROM aibridge_interceptions_v "
        f"WHERE model = '{UNKNOWN_MODEL}' AND responses > 0",
    )
    assert rows == [(s.unpriced_requests, 0)]
    daily = q(conn, f"SELECT DISTINCT cost_usd FROM aibridge_usage_daily WHERE model = '{UNKNOWN_MODEL}'")
    assert daily == [(None,)]


def test_usage_daily_by_user_model_and_day(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    by_user = {
        u: (n, c, t)
        for u, n, c, t in q(
            conn,
            "SELECT user_name, sum(requests), sum(cost_usd), sum(total_tokens) FROM aibridge_usage_daily GROUP BY 1",
        )
    }
    assert {u: v[0] for u, v in by_user.items()} == dict(s.requests_by_user)
    assert {u: v[2] for u, v in by_user.items()} == dict(s.tokens_by_user)
    for user, cost in s.cost_by_user.items():
        assert by_user[user][1] == pytest.approx(cost, rel=1e-9)
    by_model = dict(q(conn, "SELECT model, sum(requests) FROM aibridge_usage_daily GROUP BY 1"))
    assert by_model == dict(s.requests_by_model)
    by_day = dict(q(conn, "SELECT day, sum(requests) FROM aibridge_usage_daily GROUP BY 1"))
    assert by_day == dict(s.requests_by_day)
    by_instance = dict(q(conn, "SELECT provider_name, sum(requests) FROM aibridge_usage_daily GROUP BY 1"))
    assert by_instance == dict(s.requests_by_instance)
    statuses = q(conn, "SELECT sum(failed), sum(cancelled) FROM aibridge_usage_daily")[0]
    assert statuses == (s.status_counts["failed"], s.status_counts["cancelled"])


def test_sessions_view(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    rows = q(conn, "SELECT session_id, user_name, interceptions, session_kind FROM aibridge_sessions")
    assert len(rows) == len(s.sessions)
    names = {uid: name for name, uid in s.user_ids.items()}
    got = {(sid, user): n for sid, user, n, _ in rows}
    assert got == {(sid, names.get(uid, uid)): n for (sid, uid), n in _by_user_id(s).items()}
    assert {k for *_, k in rows} == {"client", "thread", "single"}
    span = q(conn, "SELECT min(duration_ms) >= 0, bool_and(ended_at >= started_at) FROM aibridge_sessions")
    assert span == [(True, True)]


def _by_user_id(s: SeedSummary) -> dict[tuple[str, str], int]:
    return {(sid, s.user_ids[user]): n for (sid, user), n in s.sessions.items()}


def test_session_tools_are_distinct_union(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, _ = seeded
    rows = q(
        conn,
        """
        SELECT s.tools, (SELECT list(DISTINCT t.tool ORDER BY t.tool) FROM aibridge_tool_calls_v t
                         WHERE t.session_id = s.session_id AND t.initiator_id = s.initiator_id)
        FROM aibridge_sessions s WHERE s.tool_calls > 0
        """,
    )
    assert rows
    for tools, expected in rows:
        assert tools == expected


def test_tool_stats(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    rows = q(conn, "SELECT tool, client, calls, errors, error_rate, mcp_calls FROM aibridge_tool_stats")
    assert {(t, c): n for t, c, n, *_ in rows} == dict(s.tool_calls_by_client)
    errors = {(t, c): e for t, c, _, e, *_ in rows if e}
    assert errors == dict(s.tool_errors_by_client)
    for _, _, calls, errs, rate, _ in rows:
        assert rate == pytest.approx(errs / calls)
    assert sum(r[5] for r in rows) == s.tool_calls["github__create_issue"]


def test_cache_efficiency(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    row = q(
        conn,
        "SELECT sum(cache_read_tokens), sum(cache_write_tokens), sum(input_tokens), "
        "min(cache_hit_ratio), max(cache_hit_ratio) FROM aibridge_cache_efficiency",
    )[0]
    assert row[:3] == (s.cache_read_tokens, s.cache_write_tokens, s.input_tokens)
    assert 0 <= row[3] <= row[4] <= 1


def test_user_summary(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    rows = q(conn, "SELECT user_name, requests, sessions, cost_usd FROM aibridge_user_summary")
    assert {u: n for u, n, *_ in rows} == dict(s.requests_by_user)
    sessions = defaultdict(int)
    for _, user in s.sessions:
        sessions[user] += 1
    assert {u: n for u, _, n, _ in rows} == dict(sessions)


def test_tool_calls_view(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    rows = q(conn, "SELECT tool, count(*), count(*) FILTER (WHERE failed) FROM aibridge_tool_calls_v GROUP BY 1")
    assert {t: n for t, n, _ in rows} == dict(s.tool_calls)
    assert {t: e for t, _, e in rows if e} == dict(s.tool_errors)
