"""Read-only SQL: what `aigw query` and the query endpoint accept, refuse and cancel."""

from __future__ import annotations

from pathlib import Path

import orjson
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


@pytest.mark.parametrize(("sql", "expected"), [
    ("select interval 1 day", "P1D"),
    ("select interval '1 day 2 hours 3 minutes 4.5 seconds'", "P1DT2H3M4.5S"),
    ("select interval 0 second", "PT0S"),
    ("select - interval 90 minute", "-PT1H30M"),
    ("select interval 1 microsecond", "PT0.000001S"),
    ("select [interval 1 day, null]", ["P1D", None]),
    ("select {'a': [1.5::decimal(4,1)], 'b': '\\xff'::blob}", {"a": [1.5], "b": "ff"}),
    ("select map {2: 'x'}", {"2": "x"}),
    ("select 2::hugeint ** 70 > 0, (2::hugeint << 100)", [True, str(2 ** 101)]),
    ("select -9223372036854775808::hugeint", -9223372036854775808),
])
def test_every_duckdb_value_becomes_json(conn, sql: str, expected: object) -> None:
    row = run_query(conn, sql).rows[0]
    assert (row if len(row) > 1 else row[0]) == expected
    orjson.dumps(row)


def test_explain_analyze_of_a_write_is_refused_and_writes_nothing(conn) -> None:
    conn.execute("insert into users values (gen_random_uuid(), 'x', now())")
    with pytest.raises(QueryError, match="read-only"):
        run_query(conn, "explain analyze delete from users")
    assert conn.execute("select count(*) from users").fetchone() == (1,)
