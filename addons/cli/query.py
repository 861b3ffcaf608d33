"""`aigw query` (read-only SQL), `aigw interceptions list|show` and `aigw sessions list`: the audit
view, through the running gateway or on a read-only connection of the command's own."""

from __future__ import annotations

import argparse
import csv
import io
import re
from typing import Any

from addons.app import runtime
from addons.cli.common import command, dump_json, fail, read_store, tidy
from addons.cli.table import INTERCEPTION_COLUMNS, SESSION_COLUMNS, format_table, render_table
from addons.settings.config import Settings


def register(sub: Any) -> None:
    help = "read-only SQL over the recorded data"
    p = command(sub, "query", cmd_query, help=help, description=help)
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")

    inter = sub.add_parser("interceptions", help="the audit view").add_subparsers(metavar="ACTION")
    p = command(inter, "list", cmd_interceptions_list, help="list interceptions, newest first")
    add_filter_arguments(p)
    p.add_argument("--after-id", metavar="CURSOR", help="the next_after_id of the previous page")
    p.add_argument("--json", action="store_true")
    command(inter, "show", cmd_interceptions_show,
            help="one interception with its tokens, prompt, tool calls and thoughts").add_argument("id")

    sessions = sub.add_parser("sessions", help="interceptions grouped by session").add_subparsers(metavar="ACTION")
    p = command(sessions, "list", cmd_sessions_list, help="summarise sessions (client session id, else thread)")
    add_filter_arguments(p)
    p.add_argument("--json", action="store_true")


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user")
    p.add_argument("--provider", help="instance name or type")
    p.add_argument("--model")
    p.add_argument("--client")
    p.add_argument("--since", help="a duration (30d, 12h) or an ISO date/time")
    p.add_argument("--until", help="a duration (30d, 12h) or an ISO date/time")
    p.add_argument("--limit", type=int, default=50)


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


# -- interceptions and sessions --------------------------------------------------


def filter_query(args: argparse.Namespace, **extra: Any) -> str:
    from urllib.parse import urlencode

    params = {k: getattr(args, k) for k in ("user", "provider", "model", "client", "since", "until", "limit")}
    params.update(extra)
    return urlencode({k: v for k, v in params.items() if v is not None})


def local_filters(args: argparse.Namespace, settings: Settings) -> Any:
    from addons.reports import filters

    return filters.build_filters(user=args.user, provider=args.provider, model=args.model, client=args.client,
                               since=args.since, until=args.until,
                               known_instances={i.name for i in settings.instances})


def cmd_interceptions_list(args: argparse.Namespace, settings: Settings) -> int:
    def local(conn: Any) -> dict[str, Any]:
        from addons.reports import audit

        rows, cursor = audit.list_interceptions(conn, local_filters(args, settings), args.limit, args.after_id)
        return {"interceptions": rows, "next_after_id": cursor}

    page = read_store(settings, lambda gw: runtime.call(
        gw, "GET", "/api/v2/aibridge/interceptions?" + filter_query(args, after_id=args.after_id)), local)
    if args.json:
        print(dump_json(page))
        return 0
    print(format_table(page["interceptions"], INTERCEPTION_COLUMNS))
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
    def local(conn: Any) -> list[dict[str, Any]]:
        from addons.reports import audit

        return audit.list_sessions(conn, local_filters(args, settings), args.limit)

    rows = read_store(
        settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/sessions?" + filter_query(args))["sessions"],
        local)
    if args.json:
        print(dump_json(rows))
    else:
        print(format_table(rows, SESSION_COLUMNS))
    return 0
