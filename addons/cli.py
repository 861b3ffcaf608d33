"""`aigw` subcommands; builds the mitmproxy master and the addon chain."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from addons import config, runtime
from addons.config import ConfigError, Settings

log = logging.getLogger("aigw")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        sys.exit(2)
    try:
        settings = config.load(args)
    except ConfigError as e:
        fail(f"configuration error: {e}")
    try:
        sys.exit(args.func(args, settings) or 0)
    except runtime.GatewayApiError as e:
        fail(str(e))
    except KeyboardInterrupt:
        sys.exit(130)


def fail(message: str, code: int = 1) -> None:
    print(f"aigw: {message}", file=sys.stderr)
    sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="An AI gateway for coding agents, on mitmproxy.")
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
                       help="set a mitmproxy option (repeatable), e.g. --set confdir=./certs")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console")

    keys = sub.add_parser("keys", help="manage gateway keys").add_subparsers(metavar="ACTION")
    p = keys.add_parser("create", help="create a key (printed once)")
    config.add_arguments(p)
    p.add_argument("--user", required=True)
    p.add_argument("--admin", action="store_true", help="may manage keys and query all data")
    p.add_argument("--expires", metavar="DUR", help="lifetime, e.g. 90d or 720h")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("list", help="list keys (never the secrets)")
    config.add_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by id")
    config.add_arguments(p)
    p.add_argument("id")
    p.set_defaults(func=cmd_keys_revoke)

    p = command("query", cmd_query, "read-only SQL over the recorded data")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")

    cfg = sub.add_parser("config", help="configuration").add_subparsers(metavar="ACTION")
    p = cfg.add_parser("check", help="validate configuration and print the provider instances")
    config.add_arguments(p)
    p.set_defaults(func=cmd_config_check)
    return parser


# -- serve -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from addons.gateway import run_gateway

    return run_gateway(settings, sets=args.set, web=args.web, quiet=args.quiet)


# -- keys ------------------------------------------------------------------------


def with_store(settings: Settings, remote: Callable[[runtime.RunningGateway], Any],
               local: Callable[[Any], Any]) -> Any:
    """Run through the running gateway if there is one, else on the database directly."""
    gateway = runtime.read(settings.db)
    if gateway is not None:
        return remote(gateway)
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
    from addons.admin import key_json
    from addons.store import keys as keystore

    expires = config.parse_duration(args.expires, "--expires") if args.expires else None

    def local(conn: Any) -> dict[str, Any]:
        try:
            info, secret = keystore.create_key(conn, args.user, admin=args.admin, expires=expires)
        except ValueError as e:
            fail(str(e))
        return {**key_json(info), "key": secret}

    created = with_store(settings, lambda gw: runtime.call(gw, "POST", "/api/v2/aibridge/keys", {
        "user": args.user, "admin": args.admin, "expires": args.expires}), local)
    if args.json:
        print(json.dumps({"id": created["id"], "user": created["user"], "key": created["key"],
                          "admin": created["admin"], "expires_at": created["expires_at"]}))
    else:
        print(f"Created key {created['id']} for {created['user']}{' (admin)' if created['admin'] else ''}.")
        print("Store it now; it is not shown again:\n")
        print(f"  {created['key']}\n")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.admin import key_json
    from addons.store import keys as keystore

    rows = with_store(settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/keys"),
                      lambda conn: [key_json(i) for i in keystore.list_keys(conn)])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["id", "user", "admin", "created_at", "expires_at", "revoked_at", "last_used_at"]
    print(render_table(columns, [[r[c] for c in columns] for r in rows]))
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import keys as keystore

    def local(conn: Any) -> bool:
        return keystore.revoke_key(conn, args.id)

    def remote(gw: runtime.RunningGateway) -> bool:
        try:
            runtime.call(gw, "DELETE", f"/api/v2/aibridge/keys/{args.id}")
        except runtime.GatewayApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    if not with_store(settings, remote, local):
        fail(f"no active key {args.id!r}")
    print(f"Revoked {args.id}.")
    return 0


# -- query -----------------------------------------------------------------------


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store.query import QueryError, run_query

    gateway = runtime.read(settings.db)
    if gateway is not None:
        result = runtime.call(gateway, "POST", "/api/v2/aibridge/query", {"sql": args.sql})
        columns, rows = result["columns"], result["rows"]
    else:
        import duckdb

        from addons.store import db

        if not settings.db.exists():
            fail(f"no database at {settings.db} (start the gateway first, or set --aibridge-db)")
        try:
            conn = db.connect(settings.db, read_only=True)
        except (db.DatabaseLockedError, duckdb.Error) as e:
            fail(str(e))
        try:
            res = run_query(conn, args.sql)
        except QueryError as e:
            fail(str(e))
        finally:
            conn.close()
        columns, rows = res.columns, res.rows
    print(format_rows(columns, rows, args.format))
    return 0


def format_rows(columns: list[str], rows: list[list[Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([dict(zip(columns, row, strict=True)) for row in rows], indent=2, default=str)
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
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= 80 else text[:79] + "…"


# -- config ----------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    print(f"configuration OK ({len(settings.instances)} provider instance(s))")
    print(f"listen: {settings.listen_host}:{settings.listen_port}   db: {settings.db}   "
          f"enabled: {settings.enabled}   allow_byok: {settings.allow_byok}")
    for instance in settings.instances:
        print(json.dumps(instance.masked(), default=str))
    return 0


__all__ = ["main"]


if __name__ == "__main__":
    main()

