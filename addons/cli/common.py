"""What every `aigw` command shares: the one-line failure, JSON output, and the way to the data (through
the running gateway when there is one, else the database or DuckLake opened by the command itself)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from addons.app import runtime
from addons.settings import sources
from addons.settings.config import Settings
from addons.settings.home import HOME_HINT


def fail(message: str, code: int = 1) -> None:
    print(f"aigw: {message}", file=sys.stderr)
    sys.exit(code)


def command(group: Any, name: str, func: Callable[..., int | None], **parser_kw: Any) -> argparse.ArgumentParser:
    """A subcommand taking the configuration options and running `func(args, settings)`."""
    p = group.add_parser(name, **parser_kw)
    sources.add_arguments(p)
    p.set_defaults(func=func)
    return p


# -- output ----------------------------------------------------------------------


def round_cost(value: float) -> float:
    """Six significant digits, and never fewer than six decimals (micro-dollars): 0.0010674999999999999
    prints as 0.0010675, 12345.6789123 as 12345.678912."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(6, 5 - math.floor(math.log10(abs(value)))))


def tidy(value: Any, key: str = "") -> Any:
    """Output values as people read them: costs (any key containing "cost") rounded by round_cost."""
    if isinstance(value, float) and "cost" in key:
        return round_cost(value)
    if isinstance(value, dict):
        return {k: tidy(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy(v, key) for v in value]
    return value


def dump_json(value: Any, indent: int | None = 2) -> str:
    """JSON as printed by every command: readable text (… not \u2026), costs rounded."""
    return json.dumps(tidy(value), indent=indent, default=str, ensure_ascii=False)


# -- the data --------------------------------------------------------------------


def missing_state(what: str, path: Path, settings: Settings, origin: str | None = None) -> str:
    """The one line a command prints when the database or CA it needs does not exist."""
    if origin is not None:
        return f"no {what} at {path} (set by {origin}); start the gateway first (aigw serve), or fix {origin}"
    return (f"no {what} at {path} (home {settings.home.path}: {settings.home.reason}); start the gateway "
            f"first (aigw serve), or point elsewhere with {HOME_HINT}")


def no_database(settings: Settings) -> str:
    return missing_state("database", settings.db, settings, settings.db_origin)


def foreign_owner(settings: Settings) -> str | None:
    """Why not to open the database here: its folder (or the home) belongs to another user (e.g. the
    service's dynamic user and `sudo aigw …` while the service is stopped), and what this process would
    write there (a new database, DuckDB's write-ahead log) would lock that user's gateway out."""
    folder = next((p for p in (settings.db.parent, settings.home.path) if p.exists()), None)
    if folder is None or (owner := folder.stat().st_uid) == os.geteuid():
        return None
    return (f"{folder} belongs to another user (uid {owner}): run this while its gateway runs (the CLI then goes "
            f"through it) or as that user; files written there as uid {os.geteuid()} would lock it out")


def with_store(settings: Settings, remote: Callable[[runtime.RunningGateway], Any],
               local: Callable[[Any], Any], *, create: bool = False) -> Any:
    """Run through the running gateway if there is one, else on the database directly.

    Only with `create` and a database location the user named (not guessed from the directory) is a
    missing database created: provisioning the first admin key before the first start.
    """
    if settings.lake is not None:  # no single writer: the CLI opens the lake itself
        conn = open_lake(settings, read_only=False)
    else:
        gateway = runtime.read(settings.db)
        if gateway is not None:
            return remote(gateway)
        if not settings.db.exists() and not (create and (settings.db_origin or settings.home.explicit)):
            fail(no_database(settings))
        if (foreign := foreign_owner(settings)) is not None:
            fail(foreign)
        from addons.store import db

        try:
            conn = db.connect(settings.db)
        except db.DatabaseLockedError as e:
            fail(f"{e}; is a gateway running with another --aibridge-db?")
    try:
        return local(conn)
    finally:
        conn.close()


def read_store(settings: Settings, remote: Callable[[runtime.RunningGateway], Any],
               local: Callable[[Any], Any]) -> Any:
    """Like with_store, for reads: through the gateway, else a read-only connection."""
    if settings.lake is not None:
        conn = open_lake(settings, read_only=True)
    else:
        gateway = runtime.read(settings.db)
        if gateway is not None:
            return remote(gateway)
        import duckdb

        from addons.store import db

        if not settings.db.exists():
            fail(no_database(settings))
        try:
            conn = db.connect(settings.db, read_only=True, limits=analytics_limits(settings))
        except (db.DatabaseLockedError, duckdb.Error) as e:
            fail(str(e))
    try:
        return local(conn)
    except ValueError as e:
        fail(str(e))
    finally:
        conn.close()


def analytics_limits(settings: Settings) -> dict[str, Any]:
    # DuckDB would take up to 80% of RAM and every core; an analyst's laptop must stay usable.
    limits: dict[str, Any] = {"memory_limit": f"{settings.analytics_memory_limit}B"}
    if settings.analytics_threads is not None:
        limits["threads"] = settings.analytics_threads
    return limits


def open_lake(settings: Settings, *, read_only: bool) -> Any:
    """A connection of this command's own to the DuckLake (replicas keep no lock on it)."""
    import duckdb

    from addons.store import lake

    assert settings.lake is not None
    try:
        return lake.connect(settings.lake, read_only=read_only, limits=analytics_limits(settings))
    except (lake.LakeError, duckdb.Error) as e:
        fail(lake.redact(str(e)))
