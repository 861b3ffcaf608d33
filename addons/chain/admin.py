"""Addon: the gateway's own API under `/api/v2/aibridge/{keys,query}`.

DuckDB allows one writing process, so while the gateway runs the CLI manages
keys and queries data through here. Every call is authenticated: an admin
gateway key, or the local admin token the gateway writes next to its
database (readable only by its owner) for the CLI on the same machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import orjson
from mitmproxy import http

from addons.chain.analytics import snapshot_dir
from addons.chain.auth import Identity, KeyCache, presented_credential
from addons.chain.governance import Governance
from addons.chain.routing import is_gateway_request, split_gateway_path
from addons.pricing.queries import missing_prices
from addons.providers.errors import any_error, json_response
from addons.reports import audit
from addons.reports.filters import Filters, build_filters, parse_since
from addons.reports.html import render_report
from addons.settings.config import Settings
from addons.settings.durations import parse_duration
from addons.settings.instances import RESERVED_NAMES
from addons.sinks.recorder import Recorder
from addons.store import governance as governance_store
from addons.store import keys as keystore
from addons.store.query import QueryError, run_query
from addons.store.snapshot import write_snapshot
from addons.wire.encoding import BodyError, decode_body

log = logging.getLogger("aigw.admin")

ANALYST_THREADS = 2

# Admin API bodies are small JSON objects (a key, a query, a setting).
MAX_ADMIN_BODY = 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def key_json(info: keystore.KeyInfo) -> dict[str, Any]:
    return {
        "id": info.id, "user": info.user_name, "admin": info.admin,
        "created_at": _iso(info.created_at), "expires_at": _iso(info.expires_at),
        "revoked_at": _iso(info.revoked_at), "last_used_at": _iso(info.last_used_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class AdminApi:
    def __init__(self, settings: Settings, recorder: Recorder, keys: KeyCache,
                 governance: Governance | None = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self.keys = keys
        self.governance = governance  # told about every change of limits, groups and budgets
        # Analysts' reads (lists, sessions, report) get their own threads: a burst of slow ones
        # waits its turn here instead of taking the default executor from the writer's callers.
        self.analysts = ThreadPoolExecutor(ANALYST_THREADS, thread_name_prefix="aigw-analyst")

    def done(self) -> None:
        self.analysts.shutdown(wait=False, cancel_futures=True)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not is_gateway_request(flow):
            return
        parts = split_gateway_path(flow.request.path)
        if parts is None:
            return
        name, rest, _query = parts
        if name not in RESERVED_NAMES:
            return
        handler = getattr(self, f"api_{name}", None)
        try:
            if handler is None:
                raise ApiError(404, f"no route for {flow.request.method} {name}{rest}", "not_found_error")
            identity = self.authenticate(flow)
            status, body = await handler(flow, identity, rest)
            content = orjson.dumps(body)
        except ApiError as e:
            status, content = e.status, any_error(str(e), e.error_type)
        except Exception:
            log.exception("admin API failed")
            status, content = 500, any_error("internal error", "api_error")
        flow.response = json_response(status, content)

    def authenticate(self, flow: http.HTTPFlow) -> Identity:
        token = presented_credential(flow.request.headers)
        # The local admin token is for the CLI on this machine; a remote peer must use an admin key.
        local = from_this_machine(flow)
        if token and not local and self.keys.is_admin_token(token):
            raise ApiError(401, "the local admin token is accepted only from this machine", "authentication_error")
        identity = self.keys.authenticate(token, datetime.now(UTC), local_admin=local)
        if identity is None:
            raise ApiError(401, "missing or invalid gateway key", "authentication_error")
        return identity

    @staticmethod
    def require_admin(identity: Identity) -> None:
        if not identity.admin:
            raise ApiError(403, "this needs an admin key", "permission_error")

    async def on_writer(self, fn: Any) -> Any:
        writer = self.recorder.writer
        assert writer is not None
        return await asyncio.to_thread(writer.call, fn)

    async def reload_keys(self) -> None:
        self.keys.replace(await self.on_writer(keystore.load_keys))

    async def api_keys(self, flow: http.HTTPFlow, identity: Identity, rest: str) -> tuple[int, Any]:
        self.require_admin(identity)
        method = flow.request.method
        if rest in ("", "/") and method == "GET":
            infos = await self.on_writer(keystore.list_keys)
            return 200, [key_json(i) for i in infos]
        if rest in ("", "/") and method == "POST":
            body = _json_body(flow)
            user = body.get("user")
            if not isinstance(user, str):
                raise ApiError(400, "field 'user' is required", "invalid_request_error")
            try:
                expires = parse_duration(body["expires"], "expires") if body.get("expires") else None
            except Exception as e:
                raise ApiError(400, str(e), "invalid_request_error") from None
            admin = bool(body.get("admin"))
            limits = {k: body[k] for k in governance_store.KEY_FIELDS if body.get(k) is not None}

            def create(conn: Any) -> tuple[keystore.KeyInfo, str]:
                for name, value in limits.items():  # validated before anything is written
                    governance_store.parse_field(name, value)
                info, secret = keystore.create_key(conn, user, admin=admin, expires=expires)
                if limits:
                    governance_store.set_key(conn, info.id, limits)
                return info, secret

            info, secret = await self.changing(create)
            await self.reload_keys()
            return 201, {**key_json(info), **limits, "key": secret}
        if rest.startswith("/") and method == "PATCH":
            key_id = self.key_id(rest[1:])
            changes = _json_body(flow)
            await self.changing(lambda conn: governance_store.set_key(conn, key_id, changes))
            return 200, {"id": key_id, **changes}
        if rest.startswith("/") and method == "DELETE":
            key_id = self.key_id(rest[1:])
            revoked = await self.on_writer(lambda conn: keystore.revoke_key(conn, key_id))
            if not revoked:
                raise ApiError(404, f"no active key {key_id!r}", "not_found_error")
            await self.reload_keys()
            return 200, {"id": key_id, "revoked": True}
        # The path may hold a key: never echo it.
        raise ApiError(404, f"no route for {method} keys/…", "not_found_error")

    async def read(self, fn: Any) -> Any:
        """Run a read on its own cursor, off the event loop."""
        conn = self.recorder.conn
        assert conn is not None

        def run() -> Any:
            cursor = conn.cursor()
            try:
                return fn(cursor)
            finally:
                cursor.close()

        try:
            return await asyncio.get_running_loop().run_in_executor(self.analysts, run)
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_request_error") from None

    def filters(self, flow: http.HTTPFlow, identity: Identity) -> Filters:
        q = flow.request.query
        if not identity.admin and q.get("user") not in (None, identity.user_name):
            raise ApiError(403, "only admin keys may see other users' data", "permission_error")
        try:
            return build_filters(
                user=q.get("user"), provider=q.get("provider"), model=q.get("model"), client=q.get("client"),
                since=q.get("since"), until=q.get("until"), session_id=q.get("session_id"),
                status=q.get("status"), initiator_id=None if identity.admin else identity.user_id,
                known_instances={i.name for i in self.settings.instances},
            )
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_request_error") from None

    def limit(self, flow: http.HTTPFlow) -> int:
        raw = flow.request.query.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= audit.MAX_LIMIT:
            raise ApiError(400, f"limit must be a whole number from 1 to {audit.MAX_LIMIT}", "invalid_request_error")
        return int(raw)

    async def api_interceptions(self, flow: http.HTTPFlow, identity: Identity, rest: str) -> tuple[int, Any]:
        if flow.request.method != "GET":
            raise ApiError(405, "use GET", "invalid_request_error")
        if rest in ("", "/"):
            f, limit, after = self.filters(flow, identity), self.limit(flow), flow.request.query.get("after_id")
            rows, cursor = await self.read(lambda c: audit.list_interceptions(c, f, limit, after))
            return 200, {"interceptions": rows, "next_after_id": cursor}
        iid = rest.strip("/")
        found = await self.read(lambda c: audit.get_interception(c, iid))
        if found is None:
            raise ApiError(404, f"no interception {iid!r}", "not_found_error")
        if not identity.admin and str(found.get("initiator_id")) != identity.user_id:
            raise ApiError(403, "this interception belongs to another user", "permission_error")
        return 200, found

    async def api_sessions(self, flow: http.HTTPFlow, identity: Identity, rest: str) -> tuple[int, Any]:
        if flow.request.method != "GET" or rest not in ("", "/"):
            raise ApiError(404, "use GET /api/v2/aibridge/sessions", "not_found_error")
        f, limit = self.filters(flow, identity), self.limit(flow)
        return 200, {"sessions": await self.read(lambda c: audit.list_sessions(c, f, limit))}

    @staticmethod
    def key_id(text: str) -> str:
        try:
            return keystore.key_id_from(text)
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_request_error") from None

    async def changing(self, fn: Any) -> Any:
        """A change of keys, limits, groups or budgets on the writer thread; the policy in force follows."""
        try:
            result = await self.on_writer(fn)
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_request_error") from None
        except LookupError as e:
            raise ApiError(404, str(e.args[0]), "not_found_error") from None
        if self.governance is not None:
            self.governance.replace_policy(await self.on_writer(governance_store.load_policy))
        return result

    async def api_governance(self, flow: http.HTTPFlow, rest: str) -> tuple[int, Any] | None:
        """`admin/users…`, `admin/groups…`, `admin/budgets`: who may spend and send how much."""
        method, parts = flow.request.method, [p for p in rest.split("/") if p]
        g = governance_store
        match parts, method:
            case ["users"], "GET":
                return 200, await self.read(g.list_users)
            case ["users", user], "PUT" | "PATCH":
                changes = _json_body(flow)
                await self.changing(lambda conn: g.set_user(conn, user, changes, create=True))
                return 200, {"user": user, **changes}
            case ["users", user, "groups"], "POST":
                group = _json_body(flow).get("group")
                await self.changing(lambda conn: g.add_member(conn, user, str(group)))
                return 200, {"user": user, "group": group}
            case ["users", user, "groups", group], "DELETE":
                await self.changing(lambda conn: g.remove_member(conn, user, group))
                return 200, {"user": user, "group": group, "removed": True}
            case ["groups"], "GET":
                return 200, await self.read(g.list_groups)
            case ["groups"], "POST":
                body = _json_body(flow)
                name = str(body.pop("name", ""))
                await self.changing(lambda conn: g.create_group(conn, name, body))
                return 201, {"group": name, **body}
            case ["groups", name], "PUT" | "PATCH":
                changes = _json_body(flow)
                await self.changing(lambda conn: g.set_group(conn, name, changes))
                return 200, {"group": name, **changes}
            case ["groups", name], "DELETE":
                await self.changing(lambda conn: g.delete_group(conn, name))
                return 200, {"group": name, "deleted": True}
            case ["budgets"], "GET":
                gov = self.settings.governance
                return 200, await self.read(lambda c: g.budgets(c, gov.budget_policy, gov.budget_period))
        return None

    async def api_admin(self, flow: http.HTTPFlow, identity: Identity, rest: str) -> tuple[int, Any]:
        """Operator actions the CLI needs while the gateway owns the database."""
        self.require_admin(identity)
        if rest.startswith(("/users", "/groups", "/budgets")):
            answer = await self.api_governance(flow, rest)
            if answer is not None:
                return answer
        if rest == "/snapshot" and flow.request.method == "POST":
            path = await self.read(lambda c: write_snapshot(c, snapshot_dir(self.settings)))
            return 200, {"snapshot": str(path)}
        if rest == "/prices/missing" and flow.request.method == "GET":
            return 200, {"missing": await self.read(missing_prices)}
        if rest == "/report" and flow.request.method == "GET":
            now = datetime.now(UTC)
            since = flow.request.query.get("since", "30d")
            try:
                start = parse_since(since, now)
            except ValueError as e:
                raise ApiError(400, str(e), "invalid_request_error") from None
            return 200, {"html": await self.read(lambda c: render_report(c, start, now))}
        raise ApiError(404, f"no route for {flow.request.method} admin{rest}", "not_found_error")

    async def api_query(self, flow: http.HTTPFlow, identity: Identity, rest: str) -> tuple[int, Any]:
        self.require_admin(identity)
        if flow.request.method != "POST" or rest not in ("", "/"):
            raise ApiError(404, "use POST /api/v2/aibridge/query", "not_found_error")
        sql = _json_body(flow).get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise ApiError(400, "field 'sql' is required", "invalid_request_error")
        conn = self.recorder.conn
        assert conn is not None
        try:
            result = await asyncio.to_thread(run_query, conn, sql)
        except QueryError as e:
            raise ApiError(400, str(e), "invalid_request_error") from None
        return 200, {"columns": result.columns, "rows": result.rows, "truncated": result.truncated}


def from_this_machine(flow: http.HTTPFlow) -> bool:
    """Whether the client connected from this machine: a loopback address, or the very address it
    connected to (the CLI of a gateway listening on one interface; a remote host cannot complete a
    TCP handshake with our own address as its source)."""
    peer = _ip(flow.client_conn.peername)
    if peer is None or peer.is_unspecified:
        return False
    return peer.is_loopback or peer == _ip(flow.client_conn.sockname)


def _ip(address: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(str(address[0]).partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _json_body(flow: http.HTTPFlow) -> dict[str, Any]:
    try:  # never `request.content`: it would decode a compressed body whole (addons/wire/encoding.py)
        content = decode_body(flow.request.raw_content or b"", flow.request.headers.get("content-encoding", ""),
                              MAX_ADMIN_BODY)
    except BodyError as e:
        raise ApiError(e.status, e.message, e.error_type) from None
    try:
        body = orjson.loads(content or b"{}")
    except orjson.JSONDecodeError:
        raise ApiError(400, "request body is not JSON", "invalid_request_error") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_request_error")
    return body


class KeyUsageFlusher:
    """Writes keys' last-used times now and then, off the event loop."""

    INTERVAL = 30.0

    def __init__(self, recorder: Recorder, keys: KeyCache) -> None:
        self.recorder = recorder
        self.keys = keys
        self.task: asyncio.Task[None] | None = None

    def running(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.loop())

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        used = self.keys.take_last_used()
        writer = self.recorder.writer
        if used and writer is not None:
            await asyncio.to_thread(writer.call, lambda conn: keystore.touch_last_used(conn, used))

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()
        used = self.keys.take_last_used()
        if used and self.recorder.writer is not None:
            self.recorder.writer.call(lambda conn: keystore.touch_last_used(conn, used))
