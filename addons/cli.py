"""`aigw` subcommands; builds the mitmproxy master and the addon chain."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from addons.app import runtime
from addons.settings import config
from addons.settings.config import (
    DEFAULT_BEDROCK_MODEL,
    DEFAULT_BEDROCK_SMALL_FAST_MODEL,
    PROPAGATE_WITHOUT_OTEL,
    Settings,
)
from addons.settings.durations import parse_duration
from addons.settings.home import HOME_HINT
from addons.settings.values import ConfigError

log = logging.getLogger("aigw")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        sys.exit(2)
    args.argv = argv
    try:
        settings = config.load(args)
    except ConfigError as e:
        fail(f"configuration error: {e}")
    if args.func not in (cmd_serve, cmd_config_check):  # the gateway logs them; config check lists them
        for warning in settings.unknown_variables:
            print(f"aigw: warning: {warning}", file=sys.stderr)
    try:
        sys.exit(args.func(args, settings) or 0)
    except (runtime.GatewayApiError, ConfigError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `aigw … | head`: the reader is gone; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def fail(message: str, code: int = 1) -> None:
    print(f"aigw: {message}", file=sys.stderr)
    sys.exit(code)


class _VersionAction(argparse.Action):
    """`--version`: the installed version is looked up only when asked (importlib.metadata costs ~40 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        from addons import __version__

        print(f"aigw {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from addons import cli_governance  # it builds on this module's helpers

    parser = argparse.ArgumentParser(prog="aigw", description="An AI gateway for coding agents, on mitmproxy.")
    parser.add_argument("--version", action=_VersionAction, help="show program's version number and exit")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, func: Callable[..., int | None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        config.add_arguments(p)
        p.set_defaults(func=func)
        return p

    for name, help in (("serve", "run the gateway (headless)"), ("web", "run the gateway under the mitmweb UI")):
        p = command(name, cmd_serve, help)
        p.set_defaults(web=name == "web")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set a mitmproxy option (repeatable), e.g. --set termlog_verbosity=debug")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console")
        p.add_argument("--workers", dest="aibridge_workers", metavar="N",
                       help="gateway processes on the listener, or auto (one per CPU); same as --aibridge-workers")
        p.add_argument("--detach", action="store_true",
                       help="run in the background (output to aigw.log in the home); return once it is ready")
    p = command("wait", cmd_wait, "wait until the gateway of this home answers /healthz")
    p.add_argument("--timeout", type=float, default=60, metavar="SECONDS")
    p = command("stop", cmd_stop, "stop the gateway of this home (it drains in-flight requests first)")
    p.add_argument("--timeout", type=float, default=60, metavar="SECONDS")

    keys = sub.add_parser("keys", help="manage gateway keys").add_subparsers(metavar="ACTION")
    p = keys.add_parser("create", help="create a key (printed once)")
    config.add_arguments(p)
    p.add_argument("--user", required=True)
    p.add_argument("--admin", action="store_true", help="may manage keys and query all data")
    p.add_argument("--expires", metavar="DUR", help="lifetime, e.g. 90d or 720h")
    p.add_argument("--json", action="store_true")
    cli_governance.add_limit_arguments(p)
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("set", help="change a key's limits and allowed models")
    config.add_arguments(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("key", metavar="ID_OR_KEY", help="the key's id (aigw_…) or the whole key")
    cli_governance.add_limit_arguments(p)
    p.set_defaults(func=cmd_keys_set)
    p = keys.add_parser("list", help="list keys (never the secrets)")
    config.add_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by its id or the whole key")
    config.add_arguments(p)
    p.add_argument("key", metavar="ID_OR_KEY", help="the key's id (aigw_…) or the whole key")
    p.set_defaults(func=cmd_keys_revoke)

    cli_governance.register(sub, config.add_arguments)

    p = command("query", cmd_query, "read-only SQL over the recorded data")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")

    inter = sub.add_parser("interceptions", help="the audit view").add_subparsers(metavar="ACTION")
    p = inter.add_parser("list", help="list interceptions, newest first")
    config.add_arguments(p)
    add_filter_arguments(p)
    p.add_argument("--after-id", metavar="CURSOR", help="the next_after_id of the previous page")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_interceptions_list)
    p = inter.add_parser("show", help="one interception with its tokens, prompt, tool calls and thoughts")
    config.add_arguments(p)
    p.add_argument("id")
    p.set_defaults(func=cmd_interceptions_show)

    sessions = sub.add_parser("sessions", help="interceptions grouped by session").add_subparsers(metavar="ACTION")
    p = sessions.add_parser("list", help="summarise sessions (client session id, else thread)")
    config.add_arguments(p)
    add_filter_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sessions_list)

    p = command("migrate", cmd_migrate, "move an embedded DuckDB database into a DuckLake (docs/SCALING.md)")
    p.add_argument("--from", dest="migrate_from", required=True, metavar="FILE", help="the aibridge.duckdb file")
    p.add_argument("--to", dest="migrate_to", required=True, metavar="ducklake:postgres:…",
                   help="an empty DuckLake: ducklake:postgres:dbname=aigw host=… user=…")
    p.add_argument("--data-path", dest="migrate_data_path", required=True, metavar="DIR|s3://…",
                   help="where the lake keeps its data files")
    command("snapshot", cmd_snapshot, "refresh the read-only snapshot that external tools open")
    p = command("report", cmd_report, "write a self-contained HTML usage report")
    p.add_argument("--since", default="30d", help="a duration (30d, 12h) or an ISO date (default 30d)")
    p.add_argument("--out", required=True, metavar="FILE.html")
    prices = sub.add_parser("prices", help="model prices").add_subparsers(metavar="ACTION")
    p = prices.add_parser("missing", help="models seen without a known price (their cost is NULL)")
    config.add_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prices_missing)

    p = command("ca", cmd_ca, "print the gateway CA certificate's path, or write a bundle with the system roots")
    p.add_argument("--bundle", metavar="FILE", help="write the system/certifi roots plus the gateway CA to FILE "
                   "(for SSL_CERT_FILE / REQUESTS_CA_BUNDLE, which replace the default roots)")
    p.add_argument("--init", action="store_true", help="create the CA in the home if there is none yet "
                   "(the gateway does so on first start)")
    p = command("env", cmd_env, "print the shell exports a client needs to use the transparent proxy")
    p.add_argument("--user-key", metavar="KEY", help="your gateway key (the proxy password)")
    p.add_argument("--bundle", metavar="FILE", help="also write the roots + gateway CA bundle to FILE and export "
                   "SSL_CERT_FILE / REQUESTS_CA_BUNDLE pointing at it")

    cfg = sub.add_parser("config", help="configuration").add_subparsers(metavar="ACTION")
    p = cfg.add_parser("check", help="validate configuration and print the provider instances")
    config.add_arguments(p)
    p.set_defaults(func=cmd_config_check)
    p = sub.add_parser("completion", help="print a bash completion script: eval \"$(aigw completion)\" "
                       "(zsh: run `autoload -U +X bashcompinit && bashcompinit` first)")
    p.set_defaults(func=cmd_completion)
    return parser


# -- serve -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.detach:
        return serve_detached(args, settings)
    from addons.app.serve import run_gateway

    return run_gateway(settings, sets=args.set, web=args.web, quiet=args.quiet)


def serve_detached(args: argparse.Namespace, settings: Settings) -> int:
    """Start `aigw serve` in the background, output to the home's aigw.log; return once /healthz answers."""
    import subprocess

    # The gateway's own warnings go to its log: say them here too, where the user is looking.
    for warning in [*settings.unknown_variables,
                    *([PROPAGATE_WITHOUT_OTEL] if settings.otel_propagate_upstream and not settings.otel else [])]:
        print(f"aigw: warning: {warning}", file=sys.stderr)
    running = runtime.read(settings.db)
    if running is not None:
        fail(f"a gateway already runs for {settings.db} at {running.url} (pid {running.pid}); stop it with aigw stop")
    log_file = settings.home.log_file
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = os.fdopen(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    except OSError as e:
        fail(f"cannot write {log_file}: {e.strerror or e} (home {settings.home.path}: {settings.home.reason})")
    with out:
        start = log_file.stat().st_size
        # -P: not the current directory first on sys.path, where an `addons` package of the user's
        # project (or anyone's) would run instead of aigw.
        child = subprocess.Popen([sys.executable, "-P", "-m", "addons", *(a for a in args.argv if a != "--detach")],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # survives the shell that started it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            with open(log_file, "rb") as f:
                f.seek(start)
                lines = f.read().decode(errors="replace").strip().splitlines()
            fail(f"the gateway exited at start ({lines[-1] if lines else f'exit code {child.returncode}'}); "
                 f"log: {log_file}")
        gateway = runtime.read(settings.db)
        if gateway is not None and gateway.pid == child.pid and runtime.healthy(gateway):
            print(f"aigw: gateway running at {gateway.url} (pid {child.pid}); log: {log_file}; stop: aigw stop")
            return 0
        time.sleep(0.1)
    fail(f"the gateway (pid {child.pid}) is not ready after 60 s; log: {log_file}")
    return 1


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        gateway = runtime.read(settings.db)
        if gateway is not None and runtime.healthy(gateway):
            print(f"aigw: gateway ready at {gateway.url}")
            return 0
        if time.monotonic() > deadline:
            fail(f"no gateway ready within {args.timeout:g} s (a running one writes "
                 f"{runtime.runtime_path(settings.db)}; home {settings.home.path}: {settings.home.reason})")
        time.sleep(0.2)


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    gateway = runtime.read(settings.db)
    if gateway is None:
        fail(f"no gateway runs for {settings.db} (home {settings.home.path}: {settings.home.reason}); "
             f"point elsewhere with {HOME_HINT}")
    assert gateway is not None
    # The pid could have been reused since a crash: stop it only if it answers with this run's admin token.
    try:
        runtime.call(gateway, "GET", "/api/v2/aibridge/keys", timeout=5)
    except runtime.GatewayApiError:
        fail(f"pid {gateway.pid} does not answer as the gateway at {gateway.url}; not stopping it "
             f"(remove {runtime.runtime_path(settings.db)} if it is stale)")
    try:
        os.kill(gateway.pid, signal.SIGTERM)
    except PermissionError:
        fail(f"the gateway (pid {gateway.pid}) belongs to another user; stop it as that user")
    deadline = time.monotonic() + args.timeout
    while runtime.read(settings.db) is not None:
        if time.monotonic() > deadline:
            fail(f"the gateway (pid {gateway.pid}) is still draining after {args.timeout:g} s")
        time.sleep(0.1)
    print(f"aigw: stopped the gateway at {gateway.url} (pid {gateway.pid})")
    return 0


# -- keys ------------------------------------------------------------------------


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


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from addons.chain.admin import key_json
    from addons.store import keys as keystore

    expires = parse_duration(args.expires, "--expires", "never expires") if args.expires else None

    from addons import cli_governance
    from addons.store import governance as governance_store

    limits = cli_governance.limit_changes(args)

    def local(conn: Any) -> dict[str, Any]:
        try:
            info, secret = keystore.create_key(conn, args.user, admin=args.admin, expires=expires)
        except ValueError as e:
            fail(str(e))
        if limits:
            governance_store.set_key(conn, info.id, limits)
        return {**key_json(info), "key": secret}

    created = with_store(settings, lambda gw: runtime.call(gw, "POST", "/api/v2/aibridge/keys", {
        "user": args.user, "admin": args.admin, "expires": args.expires, **limits}), local, create=True)
    if args.json:
        print(dump_json({"id": created["id"], "user": created["user"], "key": created["key"],
                         "admin": created["admin"], "expires_at": created["expires_at"]}, indent=None))
    else:
        print(f"Created key {created['id']} for {created['user']}{' (admin)' if created['admin'] else ''}.")
        print("Store it now; it is not shown again:\n")
        print(f"  {created['key']}\n")
    return 0


def cmd_keys_set(args: argparse.Namespace, settings: Settings) -> int:
    from addons import cli_governance
    from addons.store import governance as governance_store
    from addons.store import keys as keystore

    try:
        key_id = keystore.key_id_from(args.key)
    except ValueError as e:
        fail(str(e))
    changes = cli_governance.limit_changes(args)
    if not changes:
        fail("nothing to set: name at least one of --rpm, --tpm, --max-streams, --models")
    cli_governance.change(settings, "PATCH", f"/api/v2/aibridge/keys/{key_id}", changes,
                          lambda conn: governance_store.set_key(conn, key_id, changes), admin_prefix=False)
    text = f"key {key_id}: " + cli_governance.settings_text(changes)
    return cli_governance.done(args, {"id": key_id, **changes}, text)


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.chain.admin import key_json
    from addons.store import keys as keystore

    rows = with_store(settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/keys"),
                      lambda conn: [key_json(i) for i in keystore.list_keys(conn)])
    if args.json:
        print(dump_json(rows))
        return 0
    columns = ["id", "user", "admin", "created_at", "expires_at", "revoked_at", "last_used_at"]
    print(render_table(columns, [[r[c] for c in columns] for r in rows]))
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import keys as keystore

    try:
        key_id = keystore.key_id_from(args.key)  # a whole key is sent nowhere, only its id
    except ValueError as e:
        fail(str(e))

    def local(conn: Any) -> bool:
        return keystore.revoke_key(conn, key_id)

    def remote(gw: runtime.RunningGateway) -> bool:
        try:
            runtime.call(gw, "DELETE", f"/api/v2/aibridge/keys/{key_id}")
        except runtime.GatewayApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    if not with_store(settings, remote, local):
        fail(f"no active key {key_id!r}")
    print(f"Revoked {key_id}.")
    return 0


# -- query -----------------------------------------------------------------------


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    columns, rows = run_sql(settings, args.sql)
    print(format_rows(columns, rows, args.format))
    return 0


def run_sql(settings: Settings, sql: str) -> tuple[list[str], list[Any]]:
    """Read-only SQL through the running gateway, else on the database file."""
    from addons.store.query import QueryError, run_query

    def remote(gateway: runtime.RunningGateway) -> tuple[list[str], list[Any]]:
        result = runtime.call(gateway, "POST", "/api/v2/aibridge/query", {"sql": sql})
        return result["columns"], result["rows"]

    def local(conn: Any) -> tuple[list[str], list[Any]]:
        try:
            res = run_query(conn, sql)
        except QueryError as e:
            fail(str(e))
        return res.columns, res.rows

    return read_store(settings, remote, local)


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


def format_rows(columns: list[str], rows: list[list[Any]], fmt: str) -> str:
    rows = [[tidy(v, c) for c, v in zip(columns, row, strict=True)] for row in rows]
    if fmt == "json":
        return dump_json([dict(zip(columns, row, strict=True)) for row in rows])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return render_table(columns, rows)


def render_table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= 80 else text[:79] + "…"


# -- analysts --------------------------------------------------------------------


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user")
    p.add_argument("--provider", help="instance name or type")
    p.add_argument("--model")
    p.add_argument("--client")
    p.add_argument("--since", help="a duration (30d, 12h) or an ISO date/time")
    p.add_argument("--until", help="a duration (30d, 12h) or an ISO date/time")
    p.add_argument("--limit", type=int, default=50)


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


def filter_query(args: argparse.Namespace, **extra: Any) -> str:
    from urllib.parse import urlencode

    params = {k: getattr(args, k) for k in ("user", "provider", "model", "client", "since", "until", "limit")}
    params.update(extra)
    return urlencode({k: v for k, v in params.items() if v is not None})


def local_filters(args: argparse.Namespace, settings: Settings) -> Any:
    from addons.reports import audit

    return audit.build_filters(user=args.user, provider=args.provider, model=args.model, client=args.client,
                               since=args.since, until=args.until,
                               known_instances={i.name for i in settings.instances})


def cmd_interceptions_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.reports import audit

    def local(conn: Any) -> dict[str, Any]:
        rows, cursor = audit.list_interceptions(conn, local_filters(args, settings), args.limit, args.after_id)
        return {"interceptions": rows, "next_after_id": cursor}

    page = read_store(settings, lambda gw: runtime.call(
        gw, "GET", "/api/v2/aibridge/interceptions?" + filter_query(args, after_id=args.after_id)), local)
    if args.json:
        print(dump_json(page))
        return 0
    print(audit.format_table(page["interceptions"], audit.INTERCEPTION_COLUMNS))
    if page["next_after_id"]:
        print(f"more: --after-id {page['next_after_id']}")
    return 0


_FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")


def resolve_interception_id(settings: Settings, text: str) -> str:
    """A full interception id, or the one id that starts with `text` (as shown by `interceptions list`)."""
    prefix = text.strip().lower()
    if _FULL_ID.fullmatch(prefix):
        return prefix
    if not _ID_PREFIX.fullmatch(prefix):
        fail(f"invalid interception id {text!r} (a full id or the start of one, hex digits and dashes)")
    # The prefix is only hex digits and dashes (checked above), so it can sit in the SQL text.
    _, rows = run_sql(settings, "SELECT id::VARCHAR FROM aibridge_interceptions "
                                f"WHERE starts_with(id::VARCHAR, '{prefix}') ORDER BY id LIMIT 2")
    if not rows:
        fail(f"no interception with an id starting {prefix!r}")
    if len(rows) > 1:
        fail(f"several interceptions have ids starting {prefix!r} ({rows[0][0]}, {rows[1][0]}, …); give more of it")
    return str(rows[0][0])


def cmd_interceptions_show(args: argparse.Namespace, settings: Settings) -> int:
    from addons.reports import audit

    iid = resolve_interception_id(settings, args.id)
    found = read_store(settings, lambda gw: runtime.call(gw, "GET", f"/api/v2/aibridge/interceptions/{iid}"),
                       lambda conn: audit.get_interception(conn, iid))
    if found is None:
        fail(f"no interception {args.id!r}")
    print(dump_json(found))
    return 0


def cmd_sessions_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.reports import audit

    rows = read_store(
        settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/sessions?" + filter_query(args))["sessions"],
        lambda conn: audit.list_sessions(conn, local_filters(args, settings), args.limit))
    if args.json:
        print(dump_json(rows))
    else:
        print(audit.format_table(rows, audit.SESSION_COLUMNS))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import lake
    from addons.store.migrate import MigrateError, migrate

    if not args.migrate_to.startswith(config.LAKE_PREFIX + "postgres:"):
        fail(f"--to must name a DuckLake with its catalog in PostgreSQL: {config.LAKE_PREFIX}postgres:dbname=… host=…")
    target = config.LakeSettings(args.migrate_to, args.migrate_data_path, settings.s3_endpoint)
    try:
        copied = migrate(Path(args.migrate_from).expanduser(), target)
    except (MigrateError, lake.LakeError) as e:
        fail(lake.redact(str(e)))
    for table, n in copied.items():
        print(f"{table}: {n}")
    print(f"migrated {args.migrate_from} into {lake.describe(target)}; point the gateway at it with "
          "CODER_AIBRIDGE_DB and CODER_AIBRIDGE_DATA_PATH")
    return 0


def cmd_snapshot(args: argparse.Namespace, settings: Settings) -> int:
    from addons.chain.analytics import snapshot_dir
    from addons.store.snapshot import write_snapshot

    path = with_store(settings, lambda gw: runtime.call(gw, "POST", "/api/v2/aibridge/admin/snapshot")["snapshot"],
                      lambda conn: write_snapshot(conn, snapshot_dir(settings)))
    print(f"snapshot written: {path}")
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime
    from urllib.parse import quote

    from addons.reports import audit
    from addons.reports.html import render_report

    def local(conn: Any) -> str:
        now = datetime.now(UTC)
        return render_report(conn, audit.parse_since(args.since, now), now)

    html = read_store(settings, lambda gw: runtime.call(
        gw, "GET", f"/api/v2/aibridge/admin/report?since={quote(args.since)}")["html"], local)
    Path(args.out).write_text(html, encoding="utf-8")
    print(f"report written: {args.out}")
    return 0


def cmd_prices_missing(args: argparse.Namespace, settings: Settings) -> int:
    from addons.pricing import missing_prices

    rows = read_store(settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/admin/prices/missing")["missing"],
                      missing_prices)
    if args.json:
        print(dump_json(rows))
    elif not rows:
        print("every model seen has a price")
    else:
        columns = list(rows[0])
        print(render_table(columns, [[r[c] for c in columns] for r in rows]))
        print(price_hint(settings, rows[0]))
    return 0


def price_hint(settings: Settings, row: dict[str, Any]) -> str:
    entry = f"- {{provider: {row['provider']}, model: {row['model']}, input: 3.00, output: 15.00}}"
    if settings.prices_file == config.DEFAULT_PRICES_FILE:
        where = (f"config/prices.yaml (in a checkout; it is {config.DEFAULT_PRICES_FILE}), or to your own copy "
                 "named by --aibridge-prices-file FILE or CODER_AIBRIDGE_PRICES_FILE")
    else:
        where = str(settings.prices_file)
    return (f"To price a model, add an entry such as `{entry}` (USD per 1M tokens) to {where}, then restart "
            "the gateway.")


# -- config ----------------------------------------------------------------------


def bedrock_model_text(model: str, default: str) -> str:
    return f"{model} (Coder's default)" if model == default else model


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    from addons.app import ca

    print(f"configuration OK ({len(settings.instances)} provider instance(s))")
    for warning in settings.unknown_variables:
        print(f"warning: {warning}")
    if settings.otel_propagate_upstream and not settings.otel:
        print(f"warning: {PROPAGATE_WITHOUT_OTEL}")
    home = settings.home
    print(f"home: {home.path} ({home.reason})")
    where = f"set by {settings.db_origin}" if settings.db_origin else "in the home"
    if settings.lake is not None:
        from addons.store.lake import describe

        print(f"database: DuckLake {describe(settings.lake)}; this replica's spool and state in {settings.db.parent}")
    else:
        print(f"database: {settings.db} ({where}; {'exists' if settings.db.exists() else 'aigw serve creates it'})")
    cert = home.certs_dir / ca.CERT_FILE
    print(f"CA: {cert} ({'exists' if cert.exists() else 'aigw serve creates it'})")
    print(f"prices: {settings.prices_file}")
    gateway = runtime.read(settings.db)
    print(f"gateway: running at {gateway.url} (pid {gateway.pid})" if gateway else "gateway: not running")
    print(f"listen: {settings.listen_host}:{settings.listen_port}   "
          f"enabled: {settings.enabled}   allow_byok: {settings.allow_byok}")
    for instance in settings.instances:
        print(dump_json(instance.masked(), indent=None))
        if instance.bedrock is not None:
            model = bedrock_model_text(instance.bedrock.model, DEFAULT_BEDROCK_MODEL)
            small = bedrock_model_text(instance.bedrock.small_fast_model, DEFAULT_BEDROCK_SMALL_FAST_MODEL)
            print(f"{instance.name}: Bedrock model {model}, small-fast model {small}")
    from addons.chain.proxy_policy import build_host_map, describe_host_map

    print("\n".join(describe_host_map(build_host_map(settings))))
    return 0


# -- ca / env --------------------------------------------------------------------


def existing_ca(settings: Settings) -> Path:
    """The home's CA directory; stops with one line when the gateway has not created the CA yet."""
    from addons.app import ca

    confdir = settings.home.certs_dir
    if not (confdir / ca.CERT_FILE).is_file():
        fail(missing_state("CA", confdir / ca.CERT_FILE, settings) + " (or create it now: aigw ca --init)")
    return confdir


def write_bundle(dest: str, confdir: Path) -> Path:
    from addons.app import ca

    path, count = ca.write_bundle(Path(dest), confdir)
    print(f"aigw: wrote {path}: {count} certificates (system roots + the gateway CA)", file=sys.stderr)
    return path


def cmd_ca(args: argparse.Namespace, settings: Settings) -> int:
    from addons.app import ca

    confdir = settings.home.certs_dir
    cert = ca.ensure_ca(confdir) if args.init else existing_ca(settings) / ca.CERT_FILE
    print(write_bundle(args.bundle, confdir) if args.bundle else cert.resolve())
    return 0


def cmd_env(args: argparse.Namespace, settings: Settings) -> int:
    from addons.app import ca

    confdir = existing_ca(settings)
    bundle = write_bundle(args.bundle, confdir) if args.bundle else None
    gateway = runtime.read(settings.db)
    if gateway is not None:
        address = ca.address_of(gateway.url)
    else:
        address = ca.reachable_address(settings.listen_host, settings.listen_port)
        print(f"# No gateway runs for {settings.db}: this is the configured address.")
    print(ca.env_exports(settings, args.user_key, address, confdir, bundle))
    return 0


# -- completion ------------------------------------------------------------------


def cmd_completion(args: argparse.Namespace, settings: Settings) -> int:
    print(bash_completion(build_parser()))
    return 0


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function built from the parser: subcommands, then each one's flags."""
    words: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        subs = next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})
        words[path] = [*subs, *(o for a in p._actions for o in a.option_strings if o.startswith("--"))]
        for name, child in subs.items():
            walk(child, f"{path} {name}".strip())

    walk(parser, "")
    cases = "\n".join(f'    "{path}") words="{" ".join(w)}" ;;' for path, w in words.items())
    return f"""_aigw() {{
  local i cand path="" words paths="|{"|".join(words)}|"
  for ((i = 1; i < COMP_CWORD; i++)); do  # the subcommand path so far (flag values are skipped)
    cand="${{path:+$path }}${{COMP_WORDS[i]}}"
    [[ $paths == *"|$cand|"* ]] && path=$cand
  done
  case "$path" in
{cases}
  esac
  COMPREPLY=($(compgen -W "$words" -- "${{COMP_WORDS[COMP_CWORD]}}"))
}}
complete -o default -F _aigw aigw"""


__all__ = ["main"]


if __name__ == "__main__":
    main()

