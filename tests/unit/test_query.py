"""Read-only SQL: what `aigw query` and the query endpoint accept, refuse and cancel."""

from __future__ import annotations

from pathlib import Path

import pytest

from addons.store import db
from addons.store.query import QueryError, run_query


@pytest.fixture
def conn(tmp_path: Path):
    connection = db.connect(tmp_path / "q.duckdb")
    yield connection
    connection.close()


def test_select_returns_columns_and_json_ready_rows(conn) -> None:
    result = run_query(conn, "select 1 as a, 'x' as b, now() is not null as c, gen_random_uuid() as d")
    assert result.columns == ["a", "b", "c", "d"]
    assert result.rows[0][:3] == [1, "x", True] and isinstance(result.rows[0][3], str)


@pytest.mark.parametrize("sql", [
    "delete from aibridge_interceptions",
    "insert into users values (gen_random_uuid(), 'x', now())",
    "create table t(a int)",
    "copy (select 1) to '/tmp/aigw-should-not-exist.csv'",
    "attach '/tmp/aigw-other.duckdb'",
    "set threads = 1",
    "select 1; select 2",
])
def test_anything_but_one_read_only_statement_is_refused(conn, sql: str) -> None:
    with pytest.raises(QueryError):
        run_query(conn, sql)


def test_syntax_errors_are_one_clear_line(conn) -> None:
    with pytest.raises(QueryError) as raised:
        run_query(conn, "selec 1")
    assert "\n" not in str(raised.value)


def test_a_query_that_runs_too_long_is_cancelled(conn) -> None:
    with pytest.raises(QueryError, match="cancelled"):
        run_query(conn, "select sum(a.i * b.i) from range(100000000) a(i), range(1000) b(i)", timeout=0.3)
    # The connection is still usable afterwards.
    assert run_query(conn, "select 42").rows == [[42]]
