"""`aigw keys create|set|list|revoke`: gateway keys, through the running gateway or on the database."""

from __future__ import annotations

import argparse
from typing import Any

from addons.app import runtime
from addons.cli.common import command, dump_json, fail, with_store
from addons.cli.governance import add_limit_arguments, change, done, limit_changes, settings_text
from addons.cli.table import render_table
from addons.settings.config import Settings
from addons.settings.durations import parse_duration

_KEY_HELP = "the key's id (aigw_…) or the whole key"


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage gateway keys").add_subparsers(metavar="ACTION")
    p = command(keys, "create", cmd_keys_create, help="create a key (printed once)")
    p.add_argument("--user", required=True)
    p.add_argument("--admin", action="store_true", help="may manage keys and query all data")
    p.add_argument("--expires", metavar="DUR", help="lifetime, e.g. 90d or 720h")
    p.add_argument("--json", action="store_true")
    add_limit_arguments(p)
    p = command(keys, "set", cmd_keys_set, help="change a key's limits and allowed models")
    p.add_argument("--json", action="store_true")
    p.add_argument("key", metavar="ID_OR_KEY", help=_KEY_HELP)
    add_limit_arguments(p)
    command(keys, "list", cmd_keys_list, help="list keys (never the secrets)").add_argument(
        "--json", action="store_true")
    command(keys, "revoke", cmd_keys_revoke, help="revoke a key by its id or the whole key").add_argument(
        "key", metavar="ID_OR_KEY", help=_KEY_HELP)


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from addons.chain.admin import key_json
    from addons.store import governance as governance_store
    from addons.store import keys as keystore

    expires = parse_duration(args.expires, "--expires", "never expires") if args.expires else None
    limits = limit_changes(args)

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
    from addons.store import governance as governance_store
    from addons.store import keys as keystore

    try:
        key_id = keystore.key_id_from(args.key)
    except ValueError as e:
        fail(str(e))
    changes = limit_changes(args)
    if not changes:
        fail("nothing to set: name at least one of --rpm, --tpm, --max-streams, --models")
    change(settings, "PATCH", f"/api/v2/aibridge/keys/{key_id}", changes,
           lambda conn: governance_store.set_key(conn, key_id, changes), admin_prefix=False)
    text = f"key {key_id}: " + settings_text(changes)
    return done(args, {"id": key_id, **changes}, text)


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
