"""Audit queries: list/show interceptions, summarise sessions (filters in filters.py).

Pure library code over a DuckDB connection; the CLI (`aigw interceptions …`,
`aigw sessions list`) and the HTTP API (`/api/v2/aibridge/interceptions`,
`/sessions`) are thin wrappers. Every returned value is JSON-serialisable:
timestamps are ISO 8601 strings in UTC, UUIDs are strings, JSON columns are
parsed into dicts.

Errors a user can cause (a malformed cursor, a non-UUID id, a limit out of
range) raise `ValueError` with a one-line message meant to be printed as is.

Queries select the page of interceptions first and only then join token,
tool, thought and prompt rows for those ids, so a page costs the same on a
table of millions of rows. They never depend on the views existing, so they
also work on a database opened read-only before `create_views` ever ran.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import orjson

from addons.reports.filters import I_SESSION_ID, Filters, conditions, parse_uuid, utc
from addons.store.views import interception_facts_sql, session_summary_sql

if TYPE_CHECKING:  # for type hints only: whoever opens the connection has loaded DuckDB
    import duckdb

__all__ = [
    "MAX_LIMIT",
    "decode_cursor",
    "encode_cursor",
    "get_interception",
    "list_interceptions",
    "list_sessions",
]

MAX_LIMIT = 1000


# --------------------------------------------------------------------------- cursor


def encode_cursor(started_at: datetime | str, interception_id: str) -> str:
    """Opaque cursor for the position *after* (started_at, id) in list order."""
    ts = started_at if isinstance(started_at, str) else utc(started_at).isoformat()
    raw = orjson.dumps([ts, str(interception_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; ValueError("malformed cursor …") on anything else."""
    try:
        padded = cursor.strip() + "=" * (-len(cursor.strip()) % 4)
        ts, iid = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        return utc(datetime.fromisoformat(ts)), str(uuid.UUID(iid))
    except (ValueError, TypeError, binascii.Error, UnicodeError, orjson.JSONDecodeError):
        raise ValueError(f"malformed cursor {cursor[:40]!r}: pass the next_cursor of a previous page") from None


# --------------------------------------------------------------------------- queries

# TIMESTAMPTZ values are read as naive UTC timestamps: fetching TIMESTAMPTZ into
# Python makes duckdb import pytz, which aigw does not depend on.
_TS_COLS = ("started_at", "ended_at")
_TS_REPLACE = "* REPLACE (" + ", ".join(f"timezone('UTC', {c}) AS {c}" for c in _TS_COLS) + ")"

_LIST_FIELDS = (
    "id", "started_at", "ended_at", "duration_ms", "user", "initiator_id", "api_key_id",
    "provider", "provider_name", "model", "client", "session_id", "client_session_id",
    "thread_parent_id", "thread_root_id", "credential_kind", "credential_hint", "status",
    "responses", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "unpriced_responses", "tool_calls",
    "tool_errors", "tool_names", "thought_count", "prompt", "metadata",
)  # fmt: skip


def list_interceptions(
    conn: duckdb.DuckDBPyConnection,
    f: Filters,
    limit: int = 50,
    after_id: str | None = None,
    *,
    expand: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of interceptions, newest first (started_at DESC, id DESC).

    `after_id` is the opaque cursor returned as the second element by the
    previous call (None for the first page); the returned cursor is None on the
    last page. With `expand`, each row also carries the `tokens`, `prompts`,
    `tools` and `thoughts` lists of `get_interception` (fetched in 4 queries per
    page, not per row).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    cond, params = conditions(f)
    if after_id is not None:
        ts, iid = decode_cursor(after_id)
        cond.append("(i.started_at < ? OR (i.started_at = ? AND i.id < ?::UUID))")
        params.extend([ts, ts, iid])
    where = f"WHERE {' AND '.join(cond)}" if cond else ""
    sql = f"""
        WITH page AS (  -- the page's row ids on the sort and filter columns alone, then its whole rows
            SELECT * FROM aibridge_interceptions WHERE rowid IN (
                SELECT i.rowid FROM aibridge_interceptions i {where}
                ORDER BY i.started_at DESC, i.id DESC
                LIMIT ?)
        )
        SELECT {_TS_REPLACE} FROM ({interception_facts_sql("page", restrict=True)})
        ORDER BY started_at DESC, id DESC
    """
    rows = _dicts(conn.cursor().execute(sql, [*params, limit + 1]))
    more = len(rows) > limit
    rows = [_interception_row(r) for r in rows[:limit]]
    if expand and rows:
        _attach_children(conn, rows)
    cursor = encode_cursor(rows[-1]["started_at"], rows[-1]["id"]) if more else None
    return rows, cursor


def get_interception(
    conn: duckdb.DuckDBPyConnection, interception_id: str, *, initiator_id: str | None = None
) -> dict[str, Any] | None:
    """One interception with `tokens`, `prompts`, `tools` and `thoughts` lists, or None.

    With `initiator_id`, an interception of another user is reported as None
    (non-admin API keys must not learn that it exists).
    """
    iid = parse_uuid(interception_id, "interception id")
    sql = f"""
        WITH one AS (SELECT * FROM aibridge_interceptions WHERE id = ?::UUID)
        SELECT {_TS_REPLACE} FROM ({interception_facts_sql("one", restrict=True)})
    """
    rows = _dicts(conn.cursor().execute(sql, [iid]))
    if not rows:
        return None
    row = _interception_row(rows[0])
    if initiator_id is not None and row["initiator_id"] != parse_uuid(initiator_id, "initiator id"):
        return None
    _attach_children(conn, [row])
    return row


_SESSION_FIELDS = (
    "session_id", "session_kind", "user", "initiator_id", "client", "provider_names", "models",
    "started_at", "ended_at", "duration_ms", "interceptions", "failed", "cancelled",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "total_tokens", "cost_usd", "unpriced_responses", "tool_calls", "tool_errors", "tools", "first_prompt",
)  # fmt: skip


def list_sessions(conn: duckdb.DuckDBPyConnection, f: Filters, limit: int = 50) -> list[dict[str, Any]]:
    """Sessions (client session id, else thread root, else the interception itself),
    most recently active first.

    Filters select interceptions before grouping, so with `since` a session that
    started earlier is summarised over its interceptions inside the window.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    cond, params = conditions(f)
    cur = conn.cursor()
    keys, initiators = _recent_sessions(cur, cond, params, limit)
    if not keys:
        return []
    # Only the interceptions of those sessions are summarised (with their children): row ids of a
    # superset found on the key columns alone, then the exact session key on those rows. One semi
    # join per key column (a union) costs a third of one pass testing the three with OR.
    sql = f"""
        WITH top AS (SELECT unnest(?::VARCHAR[]) AS session_id, unnest(?::UUID[]) AS initiator_id),
        sel AS MATERIALIZED (
            SELECT i.* FROM aibridge_interceptions i
            SEMI JOIN top t ON t.session_id = {I_SESSION_ID} AND t.initiator_id = i.initiator_id
            WHERE i.rowid IN (
                SELECT rowid FROM aibridge_interceptions
                WHERE client_session_id IN (SELECT session_id FROM top)
                UNION SELECT rowid FROM aibridge_interceptions
                WHERE thread_root_id IN (SELECT TRY_CAST(session_id AS UUID) FROM top)
                UNION SELECT rowid FROM aibridge_interceptions
                WHERE id IN (SELECT TRY_CAST(session_id AS UUID) FROM top)
            ) {"AND" if cond else ""} {" AND ".join(cond)}
        ),
        facts AS ({interception_facts_sql("sel", restrict=True)})
        SELECT {_TS_REPLACE} FROM ({session_summary_sql("facts")})
        ORDER BY ended_at DESC, session_id DESC
        LIMIT ?
    """
    rows = _dicts(cur.execute(sql, [keys, initiators, *params, limit]))
    out = []
    for r in rows:
        r["user"] = r.pop("user_name")
        out.append({k: _jsonable(r[k]) for k in _SESSION_FIELDS})
    return out


def _recent_sessions(
    cur: duckdb.DuckDBPyConnection, cond: list[str], params: list[Any], limit: int
) -> tuple[list[str], list[str]]:
    """(session ids, initiator ids) of the `limit` most recently active sessions, in list order.

    A session's last activity is the latest COALESCE(ended_at, started_at) of its
    interceptions, so every session active at or after the K-th most recent
    activity has an interception among those K. Once those interceptions hold
    `limit` sessions, they hold the `limit` most recent ones: grouping them is
    exact, without computing a session key for every row of the table.
    """
    where = f"WHERE {' AND '.join(cond)}" if cond else ""
    k = limit * 40
    while True:
        # The K-th most recent activity: the top K of finished rows by ended_at and of open rows by
        # started_at, each on a plain column so the scan skips row groups by their min/max (a sort
        # on COALESCE(...) computed for every row costs ten times more).
        cut = cur.execute(
            f"""
            WITH f AS (SELECT i.started_at, i.ended_at FROM aibridge_interceptions i {where})
            SELECT active FROM (
                (SELECT ended_at AS active FROM f WHERE ended_at IS NOT NULL ORDER BY ended_at DESC LIMIT ?)
                UNION ALL
                (SELECT started_at FROM f WHERE ended_at IS NULL ORDER BY started_at DESC LIMIT ?)
            ) ORDER BY active DESC LIMIT 1 OFFSET ?
            """,
            [*params, k, k, k - 1],
        ).fetchone()
        # Without a cut (fewer than K interceptions) every one is grouped.
        recent = [*cond, "(i.ended_at >= ? OR i.ended_at IS NULL AND i.started_at >= ?)"] if cut else cond
        rows = cur.execute(
            f"""
            SELECT {I_SESSION_ID} AS session_id, i.initiator_id::VARCHAR AS initiator_id,
                   max(COALESCE(i.ended_at, i.started_at)) AS last
            FROM aibridge_interceptions i {f"WHERE {' AND '.join(recent)}" if recent else ""}
            GROUP BY ALL ORDER BY last DESC, session_id DESC LIMIT ?
            """,
            [*params, *(cut * 2 if cut else ()), limit],
        ).fetchall()
        if len(rows) >= limit or cut is None:
            return [r[0] for r in rows], [r[1] for r in rows]
        k *= 8


# --------------------------------------------------------------------------- children


_CHILD_SQL = {
    "tokens": """
        SELECT interception_id, provider_response_id, input_tokens, output_tokens,
               cache_read_input_tokens, cache_write_input_tokens, metadata, cost_usd,
               timezone('UTC', created_at) AS created_at
        FROM aibridge_token_usages WHERE interception_id IN (SELECT unnest(?::UUID[]))
        ORDER BY created_at, provider_response_id""",
    "prompts": """
        SELECT interception_id, provider_response_id, prompt, timezone('UTC', created_at) AS created_at
        FROM aibridge_user_prompts WHERE interception_id IN (SELECT unnest(?::UUID[]))
        ORDER BY created_at""",
    "tools": """
        SELECT interception_id, provider_response_id, provider_tool_call_id, provider_item_id, tool,
               input, server_url, injected, invocation_error, timezone('UTC', created_at) AS created_at
        FROM aibridge_tool_usages WHERE interception_id IN (SELECT unnest(?::UUID[]))
        ORDER BY created_at, provider_tool_call_id""",
    "thoughts": """
        SELECT interception_id, content, metadata, timezone('UTC', created_at) AS created_at
        FROM aibridge_model_thoughts WHERE interception_id IN (SELECT unnest(?::UUID[]))
        ORDER BY created_at""",
}


def _attach_children(conn: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    by_id = {r["id"]: r for r in rows}
    ids = list(by_id)
    cur = conn.cursor()
    for key, sql in _CHILD_SQL.items():
        for r in rows:
            r[key] = []
        for child in _dicts(cur.execute(sql, [ids])):
            parent = str(child.pop("interception_id"))
            if "metadata" in child:
                child["metadata"] = _json(child["metadata"])
            by_id[parent][key].append({k: _jsonable(v) for k, v in child.items()})


# --------------------------------------------------------------------------- helpers


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _json(raw: Any) -> Any:
    if raw is None or not isinstance(raw, str):
        return raw
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


def _jsonable(value: Any) -> Any:
    """duckdb values -> JSON-safe values. Naive datetimes are UTC (see _TS_REPLACE)."""
    if isinstance(value, datetime):
        return utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _interception_row(r: dict[str, Any]) -> dict[str, Any]:
    r["user"] = r.pop("user_name")
    r["metadata"] = _json(r["metadata"]) or {}
    return {k: _jsonable(r[k]) for k in _LIST_FIELDS}
