"""`aigw migrate`: move an embedded DuckDB database into a DuckLake (docs/SCALING.md).

Every table of the schema is copied in one transaction, then counted on both sides. The lake must be
empty: a second run refuses instead of copying twice (idempotent in effect, explicit in message).
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from addons.settings.config import LakeSettings
from addons.store import lake, schema

SOURCE = "aigw_source"
# Every table but the schema version (the lake has its own row).
TABLES: tuple[str, ...] = tuple(
    name for stmt in schema.DDL
    if (name := re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", stmt).group(1)) != "aigw_schema"  # type: ignore[union-attr]
)


class MigrateError(Exception):
    """Why nothing was migrated (safe to print)."""


def migrate(source: Path, target: LakeSettings) -> dict[str, int]:
    """Copy every table of `source` into the empty lake `target`; returns rows per table."""
    if not source.exists():
        raise MigrateError(f"no database at {source}")
    try:  # open the file first: a running gateway holds its lock (stop it, or copy the file)
        duckdb.connect(str(source), read_only=True).close()
    except duckdb.Error as exc:
        raise MigrateError(f"cannot open {source}: {exc} (stop the gateway that uses it first)") from None
    conn = lake.connect(target)
    try:
        filled = {t: n for t in TABLES if (n := _count(conn, t))}
        if filled:
            listed = ", ".join(f"{t} ({n} rows)" for t, n in sorted(filled.items()))
            raise MigrateError(f"the lake {lake.describe(target)} is not empty: {listed}; "
                               "migrate into a new, empty lake (nothing was copied)")
        conn.execute(f"ATTACH '{str(source).replace(chr(39), chr(39) * 2)}' AS {SOURCE} (READ_ONLY)")
        present = {r[0] for r in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [SOURCE]).fetchall()}
        copied: dict[str, int] = {}
        conn.execute("BEGIN")
        try:
            for table in TABLES:
                if table in present:
                    conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {SOURCE}.{table}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for table in TABLES:
            want = _count(conn, f"{SOURCE}.{table}") if table in present else 0
            got = _count(conn, table)
            if got != want:
                raise MigrateError(f"{table}: {got} rows in the lake, {want} in {source}")
            copied[table] = got
        return copied
    finally:
        conn.close()


def _count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0
