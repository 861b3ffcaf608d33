"""Opening the DuckDB database: permissions, schema, lock errors.

DuckDB allows one writing process per file. The gateway owns it while it
runs; everything else opens it read-only or goes through the gateway.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from addons.store import schema

log = logging.getLogger("aigw.store")

_PID_RE = re.compile(r"PID (\d+)")


class DatabaseLockedError(Exception):
    """Another process holds the database file's lock."""

    def __init__(self, path: Path, pid: int | None, holder: str | None) -> None:
        self.path = path
        self.pid = pid
        self.holder = holder
        if pid is None:
            who = "another process"
        elif holder:
            who = f"another process (PID {pid}: {holder})"
        else:
            who = f"another process (PID {pid})"
        super().__init__(f"database {path} is locked by {who}")


def utcnow() -> datetime:
    """The current time, tz-aware UTC."""
    return datetime.now(UTC)


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return text or None


def _locked_error(path: Path, exc: duckdb.Error) -> DatabaseLockedError | None:
    msg = str(exc)
    if "lock" not in msg.lower():
        return None
    m = _PID_RE.search(msg)
    pid = int(m.group(1)) if m else None
    return DatabaseLockedError(path, pid, _cmdline(pid) if pid is not None else None)


def _open(path: Path, read_only: bool, limits: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    # A read-only connection only ever reads this file: no SQL on it may touch others (see lock_down).
    config = {"enable_external_access": False, "lock_configuration": True} if read_only else {}
    config.update(limits or {})  # set at open: the configuration is locked afterwards
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.IOException as exc:
        locked = _locked_error(path, exc)
        if locked is not None:
            raise locked from exc
        raise


def connect(
    path: Path, *, read_only: bool = False, limits: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the database at `path`.

    Write mode creates the parent directory (0700) and the file (0600), applies
    the schema idempotently and records its version. Read-only mode never
    creates or migrates anything. `limits` are DuckDB settings such as
    memory_limit and threads.
    """
    path = Path(path)
    if read_only:
        if not path.exists():
            raise FileNotFoundError(
                f"database {path} does not exist (start the gateway once, or point --aibridge-db at it)"
            )
        return _open(path, read_only=True, limits=limits)

    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # DuckDB creates the file and its WAL with the process umask; tighten it
    # while we open and migrate. (umask is process-wide, but only made
    # stricter, for a few milliseconds at start-up.)
    old_umask = os.umask(0o077)
    try:
        conn = _open(path, read_only=False, limits=limits)
        try:
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
    finally:
        os.umask(old_umask)
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:  # not fatal: e.g. a file owned by someone else
        log.warning("could not restrict permissions of %s: %s", path, exc)
    return conn


def instance_limits(memory_limit: int) -> dict[str, Any]:
    """`connect(limits=)` for a database the admin query endpoint runs SQL on: DuckDB's defaults (80% of
    RAM, temp files up to 90% of the disk) let one `select list(range(1e9))` take the host; with these it
    gets an out-of-memory error. Spilling stays possible, up to 4x the memory limit on disk."""
    return {"memory_limit": f"{memory_limit}B", "max_temp_directory_size": f"{4 * memory_limit}B"}


def lock_down(conn: duckdb.DuckDBPyConnection, allowed_dirs: Iterable[Path | str] = ()) -> None:
    """From now on, no SQL on this database reads or writes other files, the network or extensions.

    DuckDB scopes these settings to the database instance, not the connection (`SET SESSION
    enable_external_access` is refused), so they cover every cursor: the admin query endpoint's and
    the writer's alike. Still reachable: the database file, its WAL and temp directory, and
    `allowed_dirs` (the gateway's snapshots; a DuckLake's data folder or s3:// prefix). The
    configuration is locked so that no statement can undo this; anything that needs a setting or
    an ATTACH must run before.
    """
    dirs = [d if isinstance(d, str) and "://" in d else str(Path(d).resolve()) + os.sep for d in allowed_dirs]
    conn.execute("SET allowed_directories = ?", [dirs])
    # Extensions load only as the gateway chose before this (DuckLake's): none by a query's mention.
    conn.execute("SET autoinstall_known_extensions = false")
    conn.execute("SET autoload_known_extensions = false")
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")


def _migrate(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("BEGIN")
    try:
        for stmt in schema.DDL:
            conn.execute(stmt)
        row = conn.execute("SELECT max(version) FROM aigw_schema").fetchone()
        current = row[0] if row else None
        if current is None:
            conn.execute("INSERT INTO aigw_schema (version) VALUES (?)", [schema.SCHEMA_VERSION])
        elif current > schema.SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {current} is newer than this aigw supports "
                f"({schema.SCHEMA_VERSION}); upgrade aigw"
            )
        elif current < schema.SCHEMA_VERSION:
            # Future migrations go here, one step at a time.
            conn.execute("DELETE FROM aigw_schema")
            conn.execute("INSERT INTO aigw_schema (version) VALUES (?)", [schema.SCHEMA_VERSION])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
