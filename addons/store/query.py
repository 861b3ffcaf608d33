"""Read-only SQL for `aigw query` and the query endpoint."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import duckdb

READ_ONLY_TYPES = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
DEFAULT_TIMEOUT = 30.0
MAX_ROWS = 100_000


class QueryError(Exception):
    """A query that was refused or failed; the message is for the user."""


@dataclass(slots=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


def check_read_only(conn: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = conn.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"cannot parse query: {first_line(e)}") from None
    if len(statements) != 1:
        raise QueryError(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in READ_ONLY_TYPES:
        raise QueryError(f"only read-only statements (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE) are allowed, "
                         f"not {kind.name}")


def run_query(conn: duckdb.DuckDBPyConnection, sql: str, timeout: float = DEFAULT_TIMEOUT) -> QueryResult:
    """Run one read-only statement on its own cursor; interrupt it after `timeout` seconds.

    Blocking: call it off the event loop.
    """
    cursor = conn.cursor()
    try:
        check_read_only(cursor, sql)
        timer = threading.Timer(timeout, cursor.interrupt)
        timer.start()
        try:
            relation = cursor.execute(sql)
            columns = [d[0] for d in relation.description or ()]
            rows = relation.fetchmany(MAX_ROWS + 1)
        except duckdb.InterruptException:
            raise QueryError(f"query cancelled after {timeout:g}s") from None
        except duckdb.Error as e:
            raise QueryError(first_line(e)) from None
        finally:
            timer.cancel()
        truncated = len(rows) > MAX_ROWS
        return QueryResult(columns, [[jsonable(v) for v in row] for row in rows[:MAX_ROWS]], truncated)
    finally:
        cursor.close()


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
