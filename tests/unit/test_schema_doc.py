"""docs/SCHEMA.md: every example query runs and every table, column and view is described."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from addons.store.schema import DDL
from addons.store.views import VIEW_NAMES
from tests.seed import seed

DOC = Path(__file__).resolve().parents[2] / "docs" / "SCHEMA.md"
TEXT = DOC.read_text(encoding="utf-8")
QUERIES = re.findall(r"```sql\n(.*?)```", TEXT, flags=re.DOTALL)


@pytest.fixture(scope="module")
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    seed(c)
    yield c
    c.close()


def test_there_are_ten_examples() -> None:
    assert len(QUERIES) == 10


@pytest.mark.parametrize("sql", QUERIES, ids=[f"example-{n + 1}" for n in range(len(QUERIES))])
def test_example_query_runs_and_returns_rows(conn: duckdb.DuckDBPyConnection, sql: str) -> None:
    cur = conn.cursor()
    # Read as strings: fetching TIMESTAMPTZ values as Python objects would need pytz.
    relation = cur.sql(sql.strip().rstrip(";"))
    rows = relation.project(", ".join(f'"{c}"::VARCHAR' for c in relation.columns)).fetchall()
    assert rows, "example returned no rows on the seeded database"


def _tables_and_columns() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for statement in DDL:
        m = re.search(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*)\)", statement, flags=re.DOTALL)
        assert m
        cols = [
            line.split()[0] for line in m.group(2).splitlines() if line.strip() and not line.strip().startswith("--")
        ]
        out[m.group(1)] = cols
    return out


def test_every_table_and_column_is_documented() -> None:
    for table, cols in _tables_and_columns().items():
        section = re.search(rf"### `{table}`\n(.*?)(?=\n### |\n## )", TEXT, flags=re.DOTALL)
        assert section, f"table {table} has no section"
        for col in cols:
            assert f"`{col}`" in section.group(1), f"{table}.{col} is not documented"


def test_every_view_and_column_is_documented() -> None:
    c = duckdb.connect()
    for statement in DDL:
        c.execute(statement)
    seed(c, days=1)
    for view in VIEW_NAMES:
        section = re.search(rf"### `{view}`\n(.*?)(?=\n### |\n## )", TEXT, flags=re.DOTALL)
        assert section, f"view {view} has no section"
        body = section.group(1)
        inherits = "Every column of" in body
        base = re.search(r"Every column of `(\w+)`", body)
        base_cols = set(_tables_and_columns()[base.group(1)]) if base else set()
        for col in (d[0] for d in c.execute(f"SELECT * FROM {view} LIMIT 0").description or ()):
            if inherits and col in base_cols:
                continue
            assert f"`{col}`" in body, f"{view}.{col} is not documented"
