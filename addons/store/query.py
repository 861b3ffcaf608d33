"""Read-only SQL for `aigw query` and the query endpoint.

Three layers: exactly one SELECT/EXPLAIN statement; run inside a READ ONLY
transaction (`EXPLAIN ANALYZE DELETE …` passes the type check and would
otherwise execute); on a database whose file, network and extension access is
off (`db.lock_down`, or a read-only connection), so table functions such as
`read_text` cannot reach the host.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

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
        cursor.execute("BEGIN TRANSACTION READ ONLY")
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
            cursor.execute("ROLLBACK")
        truncated = len(rows) > MAX_ROWS
        return QueryResult(columns, [[jsonable(v) for v in row] for row in rows[:MAX_ROWS]], truncated)
    finally:
        cursor.close()


# JSON encoders (orjson) refuse integers outside this range; HUGEINT values become strings.
_INT64 = range(-(2**63), 2**63)


def jsonable(value: Any) -> Any:
    """A DuckDB value as JSON-ready Python, nested values included."""
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return iso_duration(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):  # STRUCT, or a MAP whose keys need not be strings
        return {k if isinstance(k, str) else str(jsonable(k)): jsonable(v) for k, v in value.items()}
    return str(value)  # UUID and anything newer


def iso_duration(value: timedelta) -> str:
    """An INTERVAL as ISO 8601 (`P1DT2H`); DuckDB hands months over as 30 days."""
    sign, value = ("-", -value) if value < timedelta(0) else ("", value)
    minutes, seconds = divmod(value.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    secs = f"{seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".") if value.microseconds else str(seconds)
    time_part = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    if seconds or value.microseconds:
        time_part += f"{secs}S"
    days = f"{value.days}D" if value.days else ""
    if not days and not time_part:
        return "PT0S"
    return f"{sign}P{days}{'T' + time_part if time_part else ''}"


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
