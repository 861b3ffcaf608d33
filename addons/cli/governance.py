"""`aigw users …`, `aigw groups …`, `aigw budgets list`, and the limit options of `aigw keys`.

Each command goes through the running gateway's admin API when one runs (so the change is in force
at once), else straight to the database, like `aigw keys`.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from addons.app import runtime
from addons.cli.common import command, dump_json, fail, with_store
from addons.cli.table import render_table
from addons.settings.config import Settings

ADMIN = "/api/v2/aibridge/admin"


def add_limit_arguments(p: argparse.ArgumentParser, budget: bool = False, limits: bool = True) -> None:
    """Options setting a subject's limits; the value `none` clears one."""
    if limits:
        p.add_argument("--rpm", metavar="N", help="requests per minute (none: clear)")
        p.add_argument("--tpm", metavar="N", help="input + output tokens per minute (none: clear)")
        p.add_argument("--max-streams", metavar="N", help="requests in flight at once (none: clear)")
    if budget:
        p.add_argument("--budget", metavar="USD", help="spend per budget period in US dollars (none: clear)")
    p.add_argument("--models", metavar="GLOBS", help="allowed models, e.g. 'claude-sonnet-*,gpt-5*' (none: clear)")


def settings_text(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items())


def limit_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings named on the command line, validated (a bad value is a one-line error)."""
    from addons.store import governance as g  # here: DuckDB is not loaded for `aigw --help` or a gateway's answer

    names = {"rpm": "rpm", "tpm": "tpm", "max_streams": "max_streams", "budget": "budget_usd", "models": "models"}
    changes = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}
    for name, value in changes.items():
        try:
            g.parse_field(name, value)
        except ValueError as e:
            fail(str(e))
    return changes


def register(sub: Any) -> None:
    def action(group: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = command(group, name, func, help=help, description=help)
        p.add_argument("--json", action="store_true")
        return p

    users = sub.add_parser("users", help="users: limits, budgets, groups").add_subparsers(metavar="ACTION")
    action(users, "list", cmd_users_list, "users with their own limits, budget and groups")
    p = action(users, "set", cmd_users_set, "set a user's own limits, budget override and allowed models")
    p.add_argument("user")
    add_limit_arguments(p, budget=True)
    p = action(users, "add", cmd_users_add, "put a user in a group")
    p.add_argument("user")
    p.add_argument("--group", required=True)
    p = action(users, "remove", cmd_users_remove, "take a user out of a group")
    p.add_argument("user")
    p.add_argument("--group", required=True)

    groups = sub.add_parser("groups", help="groups with a budget per member").add_subparsers(metavar="ACTION")
    action(groups, "list", cmd_groups_list, "groups with their budget, allowed models and members")
    for name, func, help in (("create", cmd_groups_create, "create a group"),
                             ("set", cmd_groups_set, "change a group's budget or allowed models")):
        p = action(groups, name, func, help)
        p.add_argument("name")
        add_limit_arguments(p, budget=True, limits=False)
    p = action(groups, "delete", cmd_groups_delete, "delete a group (its members stay users)")
    p.add_argument("name")

    budgets = sub.add_parser("budgets", help="spend against budgets").add_subparsers(metavar="ACTION")
    action(budgets, "list", cmd_budgets_list, "spend vs budget per user this period, with the reset time")


def done(args: argparse.Namespace, result: dict[str, Any], text: str) -> int:
    """What a change did: one line, or with --json the object."""
    print(dump_json(result) if getattr(args, "json", False) else text)
    return 0


def change(settings: Settings, method: str, path: str, body: dict[str, Any], local: Any,
           admin_prefix: bool = True) -> None:
    def run_local(conn: Any) -> None:
        try:
            local(conn)
        except (ValueError, LookupError) as e:
            fail(str(e.args[0]))

    url = ADMIN + path if admin_prefix else path
    with_store(settings, lambda gw: runtime.call(gw, method, url, body), run_local, create=True)


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    rows = with_store(settings, lambda gw: runtime.call(gw, "GET", ADMIN + "/users"), g.list_users)
    if args.json:
        print(dump_json(rows))
        return 0
    columns = ["user", "budget_usd", "rpm", "tpm", "max_streams", "models", "groups", "active_keys"]
    print(render_table(columns, [[", ".join(r[c]) if c == "groups" else r.get(c) for c in columns] for r in rows]))
    return 0


def cmd_users_set(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    changes = limit_changes(args)
    if not changes:
        fail("nothing to set: name at least one of --rpm, --tpm, --max-streams, --budget, --models")
    change(settings, "PUT", f"/users/{quote(args.user, safe='')}", changes,
           lambda conn: g.set_user(conn, args.user, changes, create=True))
    return done(args, {"user": args.user, **changes}, f"user {args.user}: " + settings_text(changes))


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    change(settings, "POST", f"/users/{quote(args.user, safe='')}/groups", {"group": args.group},
           lambda conn: g.add_member(conn, args.user, args.group))
    return done(args, {"user": args.user, "group": args.group}, f"user {args.user} is in group {args.group}")


def cmd_users_remove(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    change(settings, "DELETE", f"/users/{quote(args.user, safe='')}/groups/{quote(args.group, safe='')}", {},
           lambda conn: g.remove_member(conn, args.user, args.group))
    return done(args, {"user": args.user, "group": args.group, "removed": True},
                f"user {args.user} left group {args.group}")


def cmd_groups_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    rows = with_store(settings, lambda gw: runtime.call(gw, "GET", ADMIN + "/groups"), g.list_groups)
    if args.json:
        print(dump_json(rows))
        return 0
    columns = ["group", "budget_usd", "models", "members"]
    print(render_table(columns, [[", ".join(r[c]) if c == "members" else r.get(c) for c in columns] for r in rows]))
    return 0


def cmd_groups_create(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    changes = limit_changes(args)
    change(settings, "POST", "/groups", {"name": args.name, **changes},
           lambda conn: g.create_group(conn, args.name, changes))
    return done(args, {"group": args.name, **changes},
                f"group {args.name} created" + (f": {settings_text(changes)}" if changes else ""))


def cmd_groups_set(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    changes = limit_changes(args)
    if not changes:
        fail("nothing to set: name --budget or --models")
    change(settings, "PUT", f"/groups/{quote(args.name, safe='')}", changes,
           lambda conn: g.set_group(conn, args.name, changes))
    return done(args, {"group": args.name, **changes}, f"group {args.name}: " + settings_text(changes))


def cmd_groups_delete(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    change(settings, "DELETE", f"/groups/{quote(args.name, safe='')}", {},
           lambda conn: g.delete_group(conn, args.name))
    return done(args, {"group": args.name, "deleted": True}, f"group {args.name} deleted")


def cmd_budgets_list(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import governance as g

    gov = settings.governance
    report = with_store(settings, lambda gw: runtime.call(gw, "GET", ADMIN + "/budgets"),
                        lambda conn: g.budgets(conn, gov.budget_policy, gov.budget_period))
    if args.json:
        print(dump_json(report))
        return 0
    print(f"budget period: {report['period']} from {report['period_start']}, resets at {report['resets_at']}")
    columns = ["user", "budget_usd", "spend_usd", "remaining_usd", "source", "over"]
    print(render_table(columns, [[r[c] for c in columns] for r in report["users"]]))
    return 0
