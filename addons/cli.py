"""`aigw` subcommands; builds the mitmproxy master and the addon chain."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from addons import config, runtime
from addons.config import DEFAULT_BEDROCK_MODEL, DEFAULT_BEDROCK_SMALL_FAST_MODEL, ConfigError, Settings

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
    p = command("env", cmd_env, "print the shell exports a client needs to use the transparent proxy")
    p.add_argument("--user-key", metavar="KEY", help="your gateway key (the proxy password)")

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

    def remote(gateway: runtime.RunningGateway) -> tuple[list[str], list[Any]]:
        result = runtime.call(gateway, "POST", "/api/v2/aibridge/query", {"sql": args.sql})
        return result["columns"], result["rows"]

    def local(conn: Any) -> tuple[list[str], list[Any]]:
        try:
            res = run_query(conn, args.sql)
        except QueryError as e:
            fail(str(e))
        return res.columns, res.rows

    columns, rows = read_store(settings, remote, local)
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
    gateway = runtime.read(settings.db)
    if gateway is not None:
        return remote(gateway)
    import duckdb

    from addons.store import db

    if not settings.db.exists():
        fail(f"no database at {settings.db} (start the gateway first, or set --aibridge-db)")
    try:
        conn = db.connect(settings.db, read_only=True)
    except (db.DatabaseLockedError, duckdb.Error) as e:
        fail(str(e))
    try:
        return local(conn)
    except ValueError as e:
        fail(str(e))
    finally:
        conn.close()


def filter_query(args: argparse.Namespace, **extra: Any) -> str:
    from urllib.parse import urlencode

    params = {k: getattr(args, k) for k in ("user", "provider", "model", "client", "since", "until", "limit")}
    params.update(extra)
    return urlencode({k: v for k, v in params.items() if v is not None})


def local_filters(args: argparse.Namespace, settings: Settings) -> Any:
    from addons.store import audit

    return audit.build_filters(user=args.user, provider=args.provider, model=args.model, client=args.client,
                               since=args.since, until=args.until,
                               known_instances={i.name for i in settings.instances})


def cmd_interceptions_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import audit

    def local(conn: Any) -> dict[str, Any]:
        rows, cursor = audit.list_interceptions(conn, local_filters(args, settings), args.limit, args.after_id)
        return {"interceptions": rows, "next_after_id": cursor}

    page = read_store(settings, lambda gw: runtime.call(
        gw, "GET", "/api/v2/aibridge/interceptions?" + filter_query(args, after_id=args.after_id)), local)
    if args.json:
        print(json.dumps(page, indent=2, default=str))
        return 0
    print(audit.format_table(page["interceptions"], audit.INTERCEPTION_COLUMNS))
    if page["next_after_id"]:
        print(f"more: --after-id {page['next_after_id']}")
    return 0


def cmd_interceptions_show(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import audit

    found = read_store(settings, lambda gw: runtime.call(gw, "GET", f"/api/v2/aibridge/interceptions/{args.id}"),
                       lambda conn: audit.get_interception(conn, args.id))
    if found is None:
        fail(f"no interception {args.id!r}")
    print(json.dumps(found, indent=2, default=str))
    return 0


def cmd_sessions_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import audit

    rows = read_store(
        settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/sessions?" + filter_query(args))["sessions"],
        lambda conn: audit.list_sessions(conn, local_filters(args, settings), args.limit))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(audit.format_table(rows, audit.SESSION_COLUMNS))
    return 0


def cmd_snapshot(args: argparse.Namespace, settings: Settings) -> int:
    from addons.analytics import snapshot_dir
    from addons.store.snapshot import write_snapshot

    path = with_store(settings, lambda gw: runtime.call(gw, "POST", "/api/v2/aibridge/admin/snapshot")["snapshot"],
                      lambda conn: write_snapshot(conn, snapshot_dir(settings)))
    print(f"snapshot written: {path}")
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime
    from urllib.parse import quote

    from addons.report import render_report
    from addons.store import audit

    def local(conn: Any) -> str:
        now = datetime.now(UTC)
        return render_report(conn, audit.parse_since(args.since, now), now)

    html = read_store(settings, lambda gw: runtime.call(
        gw, "GET", f"/api/v2/aibridge/admin/report?since={quote(args.since)}")["html"], local)
    Path(args.out).write_text(html, encoding="utf-8")
    print(f"report written: {args.out}")
    return 0


def cmd_prices_missing(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store.prices import missing_prices

    rows = read_store(settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/admin/prices/missing")["missing"],
                      missing_prices)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print("every model seen has a price")
    else:
        columns = list(rows[0])
        print(render_table(columns, [[r[c] for c in columns] for r in rows]))
    return 0


# -- config ----------------------------------------------------------------------


def bedrock_model_text(model: str, default: str) -> str:
    return f"{model} (Coder's default)" if model == default else model


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    print(f"configuration OK ({len(settings.instances)} provider instance(s))")
    print(f"listen: {settings.listen_host}:{settings.listen_port}   db: {settings.db}   "
          f"enabled: {settings.enabled}   allow_byok: {settings.allow_byok}")
    for instance in settings.instances:
        print(json.dumps(instance.masked(), default=str))
        if instance.bedrock is not None:
            print(f"{instance.name}: Bedrock model {bedrock_model_text(instance.bedrock.model, DEFAULT_BEDROCK_MODEL)}, "
                  "small-fast model "
                  f"{bedrock_model_text(instance.bedrock.small_fast_model, DEFAULT_BEDROCK_SMALL_FAST_MODEL)}")
    from addons.proxy_policy import build_host_map, describe_host_map

    print("\n".join(describe_host_map(build_host_map(settings))))
    return 0


# -- ca / env --------------------------------------------------------------------


def cmd_ca(args: argparse.Namespace, settings: Settings) -> int:
    from addons import ca

    if args.bundle:
        path, count = ca.write_bundle(Path(args.bundle))
        print(path)
        print(f"aigw: wrote {count} certificates (system roots + the gateway CA)", file=sys.stderr)
    else:
        print(ca.ensure_ca())
    return 0


def cmd_env(args: argparse.Namespace, settings: Settings) -> int:
    from addons import ca

    print(ca.env_exports(settings, args.user_key))
    return 0


__all__ = ["main"]


if __name__ == "__main__":
    main()

