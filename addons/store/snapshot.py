"""Read-only snapshot of the recorded data for external tools (DuckDB CLI, Jupyter, BI).

Layout under `out_dir`:

    aibridge.duckdb                          all tables + the analyst views
    parquet/<table>/day=YYYY-MM-DD/*.parquet tables partitioned by UTC day
    parquet/<table>/data.parquet             tables without a time column

How it stays consistent and safe:
- `COPY FROM DATABASE` copies every table (and view) in ONE statement, so it
  reads one MVCC snapshot of the live database while the writer thread keeps
  appending through its own connection; we use `conn.cursor()` so our
  ATTACH/USE never disturb the caller's connection state.
- The copy goes to a temporary file that is renamed over `aibridge.duckdb` only
  after it was checkpointed and detached; Parquet files are exported from that
  same copy (so both formats show the same instant) into a temporary directory
  that is then swapped in. Any failure leaves the previous snapshot untouched.
- Key hashes are replaced by a placeholder in the copy: external tools never
  need them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from pathlib import Path

import duckdb

from addons.store.views import VIEWS, utc_day

__all__ = ["SNAPSHOT_DB", "SNAPSHOT_PARQUET", "write_snapshot"]

SNAPSHOT_DB = "aibridge.duckdb"
SNAPSHOT_PARQUET = "parquet"

# Interval and on-demand refreshes may race; one snapshot at a time per process.
_LOCK = threading.Lock()

# Column used to partition each table's Parquet files by day (first one present).
_TIME_COLUMNS = ("started_at", "created_at")


def write_snapshot(conn: duckdb.DuckDBPyConnection, out_dir: Path, *, parquet: bool = True) -> Path:
    """Write a consistent snapshot of `conn`'s database into `out_dir`; returns the DB file path.

    Safe to call while another thread writes through `conn` (or a cursor of it).
    On any error the previous snapshot stays as it was and the error propagates.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_db = out_dir / SNAPSHOT_DB
    token = uuid.uuid4().hex[:12]
    tmp_db = out_dir / f".{SNAPSHOT_DB}.tmp-{token}"
    tmp_parquet = out_dir / f".{SNAPSHOT_PARQUET}.tmp-{token}"
    with _LOCK:
        try:
            # All fallible work happens on temporary names first ...
            _build(conn.cursor(), tmp_db, tmp_parquet if parquet else None, f"aigw_snapshot_{token}")
            _fsync(tmp_db)
            # ... then only renames: Parquet swapped in, DB published, Parquet rolled back if that fails.
            backup = _swap_in(tmp_parquet, out_dir / SNAPSHOT_PARQUET) if parquet else None
            try:
                _publish_db(tmp_db, final_db)
            except BaseException:
                if parquet:
                    _restore(out_dir / SNAPSHOT_PARQUET, backup)
                raise
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)
        finally:
            _remove(tmp_db)
            _remove(Path(f"{tmp_db}.wal"))
            shutil.rmtree(tmp_parquet, ignore_errors=True)
    return final_db


def _build(cur: duckdb.DuckDBPyConnection, tmp_db: Path, tmp_parquet: Path | None, alias: str) -> None:
    source = cur.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    cur.execute(f"ATTACH {_literal(str(tmp_db))} AS {alias}")
    try:
        cur.execute(f"COPY FROM DATABASE {_ident(source)} TO {alias}")
        _redact(cur, alias)
        _ensure_views(cur, alias, source)
        if tmp_parquet is not None:
            _export_parquet(cur, alias, tmp_parquet)
        cur.execute(f"CHECKPOINT {alias}")
    finally:
        cur.execute(f"DETACH {alias}")


def _redact(cur: duckdb.DuckDBPyConnection, alias: str) -> None:
    if _has_table(cur, alias, "api_keys"):
        # Unique and non-null like the original column, but carrying no secret material.
        cur.execute(f"UPDATE {alias}.api_keys SET key_hash = 'redacted:' || id")


def _ensure_views(cur: duckdb.DuckDBPyConnection, alias: str, source: str) -> None:
    """COPY FROM DATABASE copies existing views; (re)create ours so the snapshot always has them."""
    cur.execute(f"USE {alias}")
    try:
        for statement in VIEWS:
            cur.execute(statement)
    finally:
        cur.execute(f"USE {_ident(source)}")


def _export_parquet(cur: duckdb.DuckDBPyConnection, alias: str, target: Path) -> None:
    target.mkdir(parents=True)
    tables = cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
        "AND NOT temporary ORDER BY table_name",
        [alias],
    ).fetchall()
    for (table,) in tables:
        table_dir = target / table
        table_dir.mkdir()
        time_col = _time_column(cur, alias, table)
        relation = f"{alias}.main.{_ident(table)}"
        if time_col is None:
            cur.execute(f"COPY {relation} TO {_literal(str(table_dir / 'data.parquet'))} (FORMAT parquet)")
            continue
        cur.execute(
            f"COPY (SELECT *, {utc_day(_ident(time_col))} AS day FROM {relation}) "
            f"TO {_literal(str(table_dir))} (FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE)"
        )


def _time_column(cur: duckdb.DuckDBPyConnection, alias: str, table: str) -> str | None:
    cols = {
        name: dtype
        for name, dtype in cur.execute(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = ? AND schema_name = 'main' AND table_name = ?",
            [alias, table],
        ).fetchall()
    }
    for name in _TIME_COLUMNS:
        if cols.get(name, "").startswith("TIMESTAMP"):
            return name
    return None


def _has_table(cur: duckdb.DuckDBPyConnection, alias: str, table: str) -> bool:
    row = cur.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' AND table_name = ?",
        [alias, table],
    ).fetchone()
    return bool(row and row[0])


def _swap_in(new: Path, current: Path) -> Path | None:
    """Move `current` aside and `new` into its place; returns the moved-aside path (or None)."""
    backup = current.with_name(f".{current.name}.old-{uuid.uuid4().hex[:12]}")
    if current.exists():
        os.replace(current, backup)
    try:
        os.replace(new, current)
    except BaseException:
        _restore(current, backup if backup.exists() else None)
        raise
    return backup if backup.exists() else None


def _restore(current: Path, backup: Path | None) -> None:
    """Undo `_swap_in`: put the previous tree back (or remove the new one if there was none)."""
    if current.exists():
        shutil.rmtree(current, ignore_errors=True)
    if backup is not None:
        os.replace(backup, current)


def _publish_db(tmp_db: Path, final_db: Path) -> None:
    # Atomic on POSIX: readers see the old file or the new one, never a mix;
    # processes that still have the old file open keep reading the old inode.
    os.replace(tmp_db, final_db)


def _fsync(path: Path) -> None:
    # The rename must not expose a file whose blocks are not on disk yet.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
