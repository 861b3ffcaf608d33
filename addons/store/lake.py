"""DuckLake: one database shared by several gateway replicas (docs/SCALING.md).

The catalog lives in PostgreSQL, the data files in a folder or S3. Each process opens an in-memory
DuckDB on the lake (its main database), with the ducklake/postgres/httpfs extensions loaded from
their PyPI wheels (never downloaded at run time). DuckLake has no PRIMARY KEY/UNIQUE constraints and
commits concurrent appends from several writers without losing any; uniqueness is kept by the
writers (random ids, check-then-write under DuckLake's conflict detection).

Work that must run on one replica at a time (retention, compaction) takes a lease: a row in a
PostgreSQL table, taken and renewed with one atomic upsert.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from addons.settings.config import LAKE_PREFIX, LakeSettings
from addons.store import schema

log = logging.getLogger("aigw.store")

ALIAS = "aibridge"  # the name the lake is attached under while it is created or migrated
PG_ALIAS = "aigw_catalog"  # the PostgreSQL catalog database itself, for leases
EXTENSIONS = ("ducklake", "postgres", "httpfs")
LEASE_TABLE = "aigw_leases"
REPLICA_LEASE = "replica:"  # + the replica's name: its heartbeat
MIGRATE_ATTEMPTS = 10  # replicas starting together race on CREATE TABLE; the loser retries
_SECRET_RE = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


class LakeError(Exception):
    """The lake cannot be opened (message safe to print: no password)."""


def redact(text: str) -> str:
    """`text` without any password of a connection string."""
    return _SECRET_RE.sub(r"\1***", text)


def describe(lake: LakeSettings) -> str:
    """The lake as logs and errors show it: the catalog without its password, and the data path."""
    return f"{redact(lake.catalog)} (data {lake.data_path})"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def extension_file(name: str) -> Path:
    """The extension binary shipped by the `duckdb-extension-<name>` wheel."""
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise LakeError(f"the DuckDB extension {name} is not installed (pip install duckdb-extension-{name}=="
                        f"{duckdb.__version__})")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
        if found:
            return found[0]
    raise LakeError(f"duckdb-extension-{name} does not ship a build for DuckDB {duckdb.__version__}")


def _needed(lake: LakeSettings) -> tuple[str, ...]:
    """httpfs only for data in S3 (loading an extension takes a moment)."""
    return EXTENSIONS if lake.data_path.startswith("s3://") else EXTENSIONS[:2]


def _link_extensions(conn: duckdb.DuckDBPyConnection, folder: Path) -> None:
    """The wheels' binaries, linked where DuckDB (auto)loads extensions from (no copy of ~100 MB)."""
    row = conn.execute("PRAGMA platform").fetchone()
    assert row is not None
    target = folder / f"v{duckdb.__version__}" / str(row[0])
    target.mkdir(parents=True)
    for name in EXTENSIONS:
        installed = "postgres_scanner" if name == "postgres" else name  # DuckDB's own name for it
        (target / f"{installed}.duckdb_extension").symlink_to(extension_file(name))


def _s3_secret(conn: duckdb.DuckDBPyConnection, lake: LakeSettings) -> None:
    """S3 credentials from the standard AWS chain (environment, profile, instance role) as a DuckDB secret."""
    import botocore.session

    session = botocore.session.get_session()
    creds = session.get_credentials()
    params: dict[str, str] = {"TYPE": "s3"}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        params["KEY_ID"] = frozen.access_key
        params["SECRET"] = frozen.secret_key
        if frozen.token:
            params["SESSION_TOKEN"] = frozen.token
    params["REGION"] = session.get_config_variable("region") or "us-east-1"
    if lake.s3_endpoint:
        url = urlsplit(lake.s3_endpoint)
        params["ENDPOINT"] = url.netloc
        params["URL_STYLE"] = "path"
        params["USE_SSL"] = "true" if url.scheme == "https" else "false"
    body = ", ".join(f"{k} {v if k in ('TYPE', 'USE_SSL') else _quote(v)}" for k, v in params.items())
    conn.execute(f"CREATE OR REPLACE SECRET aigw_s3 ({body})")


def pg_dsn(lake: LakeSettings) -> str:
    """The libpq connection string of the catalog database, without its password (see _catalog)."""
    return _catalog(lake)[len(LAKE_PREFIX + "postgres:"):].strip()


def _catalog(lake: LakeSettings) -> str:
    """The catalog string without a `password=`: DuckDB repeats the connection string in its errors,
    which reach logs. The password goes to libpq's own PGPASSWORD instead (unless that is set)."""
    found = _SECRET_RE.search(lake.catalog)
    if found is None:
        return lake.catalog
    os.environ.setdefault("PGPASSWORD", found.group(2).strip("'"))
    return _SECRET_RE.sub("", lake.catalog).strip()


def connect(lake: LakeSettings, *, read_only: bool = False, limits: dict[str, Any] | None = None,
            migrate: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB whose main database is the lake: every cursor of it (the writer's, the admin query
    endpoint's, reports') sees the lake's tables unqualified.

    A first connection attaches the lake with its DATA_PATH (creating it, or checking the path) and, in
    write mode, creates the tables (lake flavour of schema.DDL) and the lease table when missing.
    """
    with tempfile.TemporaryDirectory(prefix="aigw-duckdb-ext-") as ext_dir:
        base: dict[str, Any] = {"extension_directory": ext_dir, "autoinstall_known_extensions": False}
        boot = duckdb.connect(":memory:", config={**base, "autoload_known_extensions": False})
        try:
            _link_extensions(boot, Path(ext_dir))
            for name in _needed(lake):
                boot.execute(f"LOAD {name}")
            if not read_only:
                if lake.data_path.startswith("s3://"):
                    _s3_secret(boot, lake)
                else:
                    Path(lake.data_path).mkdir(mode=0o700, parents=True, exist_ok=True)
                _attach(boot, lake, f"ATTACH {_quote(_catalog(lake))} AS {ALIAS} (DATA_PATH {_quote(lake.data_path)})")
                boot.execute(f"USE {ALIAS}")
                if migrate:
                    _migrate(boot)
                    _lease_table(boot, lake)
        finally:
            boot.close()
        try:
            conn = duckdb.connect(_catalog(lake), read_only=read_only,
                                  config={**base, "autoload_known_extensions": True, **(limits or {})})
        except duckdb.Error as exc:
            raise LakeError(f"cannot open the DuckLake {describe(lake)}: {redact(str(exc))}") from None
        try:
            for name in _needed(lake):  # loaded now: the folder goes away
                conn.execute(f"LOAD {name}")
            if lake.data_path.startswith("s3://"):
                _s3_secret(conn, lake)
            if not read_only:
                conn.execute(f"ATTACH {_quote(pg_dsn(lake))} AS {PG_ALIAS} (TYPE postgres)")
                # DuckLake's own commit retry can drop a transaction's deletes of inlined rows when it re-applies
                # them after another replica's commit (an UPDATE then leaves the old row version visible: a
                # duplicate id, seen with three replicas). A conflict comes to aigw instead, whose writer and
                # `retry_conflicts` run the whole transaction again from the start.
                conn.execute("SET GLOBAL ducklake_max_retry_count = 0")
        except BaseException:
            conn.close()
            raise
    return conn


def _attach(conn: duckdb.DuckDBPyConnection, lake: LakeSettings, sql: str) -> None:
    try:
        conn.execute(sql)
    except duckdb.Error as exc:
        raise LakeError(f"cannot attach the DuckLake {describe(lake)}: {redact(str(exc))}") from None


def catalog_name(conn: duckdb.DuckDBPyConnection) -> str:
    """The name DuckDB gave the lake opened by connect() (derived from the connection string)."""
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def _lease_table(conn: duckdb.DuckDBPyConnection, lake: LakeSettings) -> None:
    conn.execute(f"ATTACH {_quote(pg_dsn(lake))} AS {PG_ALIAS} (TYPE postgres)")
    conn.execute(f"CALL postgres_execute('{PG_ALIAS}', 'CREATE TABLE IF NOT EXISTS {LEASE_TABLE} ("
                 "name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)')")


def _migrate(conn: duckdb.DuckDBPyConnection) -> None:
    for attempt in range(MIGRATE_ATTEMPTS):
        try:
            conn.execute("BEGIN")
            for stmt in schema.LAKE_DDL:
                conn.execute(stmt)
            row = conn.execute("SELECT max(version) FROM aigw_schema").fetchone()
            current = row[0] if row else None
            if current is not None and current > schema.SCHEMA_VERSION:
                raise RuntimeError(f"lake schema version {current} is newer than this aigw supports "
                                   f"({schema.SCHEMA_VERSION}); upgrade aigw")
            if current is None:
                conn.execute("INSERT INTO aigw_schema (version) VALUES (?)", [schema.SCHEMA_VERSION])
            conn.execute("COMMIT")
            break
        except duckdb.TransactionException:
            _rollback(conn)
            if attempt == MIGRATE_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))  # another replica created the tables first
        except BaseException:
            _rollback(conn)
            raise


def is_conflict(exc: BaseException) -> bool:
    """A commit that lost to another replica's (DuckLake's optimistic concurrency, or PostgreSQL's own
    serialization failure in the catalog); nothing was written, it can simply run again."""
    if not isinstance(exc, duckdb.Error):
        return False
    text = str(exc).lower()
    return (("conflict" in text and isinstance(exc, duckdb.TransactionException)) or "could not serialize" in text
            or "maximum retry count" in text)  # DuckLake's commit lost to another's and is not retried by it


def _rollback(conn: duckdb.DuckDBPyConnection) -> None:
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error:
        pass


def retry_conflicts(conn: duckdb.DuckDBPyConnection, fn: Callable[[duckdb.DuckDBPyConnection], Any],
                    attempts: int = 20) -> Any:
    """Run `fn` in a transaction, again when another replica's commit conflicted with it."""
    for attempt in range(attempts):
        conn.execute("BEGIN")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
            return result
        except duckdb.Error as exc:
            _rollback(conn)
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        except BaseException:
            _rollback(conn)
            raise
    return None


def take_lease(conn: duckdb.DuckDBPyConnection, name: str, holder: str, ttl: float) -> bool:
    """Take or renew the lease `name` for `ttl` seconds; True when `holder` has it.

    One upsert in PostgreSQL: it succeeds for the holder or when the lease expired, so at most
    one replica holds a lease at any time (clocks: PostgreSQL's own)."""
    sql = (f"INSERT INTO {LEASE_TABLE} (name, holder, expires_at) "
           f"VALUES ({_quote(name)}, {_quote(holder)}, now() + interval '{float(ttl)} seconds') "
           f"ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at "
           f"WHERE {LEASE_TABLE}.holder = excluded.holder OR {LEASE_TABLE}.expires_at < now()")
    conn.execute(f"CALL postgres_execute('{PG_ALIAS}', ?)", [sql])
    row = conn.execute(f"SELECT holder FROM postgres_query('{PG_ALIAS}', ?)",
                       [f"SELECT holder FROM {LEASE_TABLE} WHERE name = {_quote(name)}"]).fetchone()
    return row is not None and row[0] == holder


def expired_replicas(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Replicas whose heartbeat lease expired."""
    rows = conn.execute(f"SELECT holder FROM postgres_query('{PG_ALIAS}', ?)", [
        f"SELECT holder FROM {LEASE_TABLE} WHERE name LIKE '{REPLICA_LEASE}%' AND expires_at < now()"]).fetchall()
    return [r[0] for r in rows]


def forget_replica(conn: duckdb.DuckDBPyConnection, replica: str) -> None:
    """Drop an expired replica's heartbeat (a replica back since then has renewed it: kept)."""
    conn.execute(f"CALL postgres_execute('{PG_ALIAS}', ?)", [
        f"DELETE FROM {LEASE_TABLE} WHERE name = {_quote(REPLICA_LEASE + replica)} AND expires_at < now()"])


# How long a file merged away or expired stays in the object store before the upkeep deletes it: a query
# that began before the merge (a replica's, the CLI's, an analyst's attach) still reads it meanwhile.
FILE_GRACE = 3600.0


def maintain(conn: duckdb.DuckDBPyConnection, keep_snapshots: float) -> None:
    """Compaction: inlined rows to Parquet, small files merged, snapshots older than `keep_snapshots`
    seconds expired, and files no longer needed deleted once `FILE_GRACE` has passed."""
    name = _quote(catalog_name(conn))
    conn.execute(f"CALL ducklake_flush_inlined_data({name})")
    conn.execute(f"CALL ducklake_merge_adjacent_files({name})")
    conn.execute(f"CALL ducklake_expire_snapshots({name}, older_than => now() - to_seconds(?))",
                 [float(keep_snapshots)])
    conn.execute(f"CALL ducklake_cleanup_old_files({name}, older_than => now() - to_seconds(?))", [FILE_GRACE])


def replica_id(home: Path) -> str:
    """This replica's stable name: the host and its home (what a restart finds again)."""
    return f"{os.uname().nodename}:{home.resolve()}"
