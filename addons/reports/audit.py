"""Audit queries: list/show interceptions, summarise sessions, parse filters, format tables.

Pure library code over a DuckDB connection; the CLI (`aigw interceptions …`,
`aigw sessions list`) and the HTTP API (`/api/v2/aibridge/interceptions`,
`/sessions`) are thin wrappers. Every returned value is JSON-serialisable:
timestamps are ISO 8601 strings in UTC, UUIDs are strings, JSON columns are
parsed into dicts.

Errors a user can cause (a bad `--since`, an unknown instance, a malformed
cursor, a non-UUID id) raise `ValueError` with a one-line message meant to be
printed as is.

Queries select the page of interceptions first and only then join token,
tool, thought and prompt rows for those ids, so a page costs the same on a
table of millions of rows. They never depend on the views existing, so they
also work on a database opened read-only before `create_views` ever ran.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from addons.settings.durations import parse_duration
from addons.settings.values import ConfigError
from addons.store.views import interception_facts_sql, session_summary_sql

if TYPE_CHECKING:  # the CLI formats a gateway's answer without loading DuckDB
    import duckdb

__all__ = [
    "INTERCEPTION_COLUMNS",
    "MAX_LIMIT",
    "PROVIDER_TYPES",
    "SESSION_COLUMNS",
    "STATUSES",
    "Filters",
    "build_filters",
    "decode_cursor",
    "encode_cursor",
    "format_table",
    "get_interception",
    "list_interceptions",
    "list_sessions",
    "parse_since",
    "validate_filters",
]

PROVIDER_TYPES = frozenset({"anthropic", "openai", "copilot"})
STATUSES = frozenset({"completed", "failed", "cancelled"})
MAX_LIMIT = 1000

_TIME_HELP = "use a duration like 30d, 12h, 90m or an ISO date/time like 2025-06-01 or 2025-06-01T12:00:00Z"


# --------------------------------------------------------------------------- filters


def parse_since(text: str, now: datetime) -> datetime:
    """Parse a `--since`/`--until` value into an aware UTC datetime.

    Accepts a duration back from `now` ("30d", "12h", "90m", "45s", "2w"; settings/durations.py), an ISO
    date ("2025-06-01", midnight UTC) or an ISO timestamp ("2025-06-01T12:00:00Z";
    naive times are taken as UTC). Raises ValueError with a one-line message.
    """
    raw = (text or "").strip()
    if not raw:
        raise ValueError(f"empty time value: {_TIME_HELP}")
    now = _aware(now)
    try:
        back = parse_duration(raw, "time value", weeks=True) or timedelta()
    except ConfigError:
        pass  # an ISO date or time
    else:
        try:
            return now - back
        except OverflowError:
            raise ValueError(f"time value {raw!r} is too far in the past") from None
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), datetime.min.time(), UTC)
        return _aware(datetime.fromisoformat(raw.replace("z", "Z")))
    except ValueError:
        raise ValueError(f"invalid time {raw!r}: {_TIME_HELP}") from None


@dataclass(slots=True)
class Filters:
    """Conditions on interceptions; None means "any". All conditions are ANDed.

    user:         user name (users.name), exact.
    provider:     instance name (provider_name) or provider type (anthropic|openai|copilot).
    model:        exact model name, or a glob with * ? [..] (case-insensitive).
    client:       client name (Claude Code, Codex, Copilot, …), case-insensitive.
    since/until:  started_at >= since and started_at < until (aware datetimes).
    initiator_id: restrict to one user id (non-admin API callers see only their own).
    session_id:   one session (client session id, thread root id or interception id).
    status:       completed | failed | cancelled.
    """

    user: str | None = None
    provider: str | None = None
    model: str | None = None
    client: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    initiator_id: str | None = None
    session_id: str | None = None
    status: str | None = None


def validate_filters(f: Filters, known_instances: set[str] | None) -> None:
    """Raise ValueError (one line) for filters that can only be a mistake.

    `known_instances` are the configured instance names (a provider type is
    accepted too); None skips that check.
    """
    if (
        f.provider is not None
        and known_instances is not None
        and f.provider not in known_instances
        and f.provider not in PROVIDER_TYPES
    ):
        names = ", ".join(sorted(known_instances)) or "none configured"
        raise ValueError(f"unknown provider instance {f.provider!r} (known: {names})")
    if f.initiator_id is not None:
        _uuid(f.initiator_id, "initiator id")
    if f.status is not None and f.status not in STATUSES:
        raise ValueError(f"unknown status {f.status!r} (use one of: {', '.join(sorted(STATUSES))})")
    if f.since is not None and f.until is not None and _aware(f.since) >= _aware(f.until):
        raise ValueError("--since must be earlier than --until")
    for name in ("user", "model", "client", "session_id"):
        value = getattr(f, name)
        if value is not None and not value.strip():
            raise ValueError(f"empty {name.replace('_', ' ')} filter")


def build_filters(
    *,
    user: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    client: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    initiator_id: str | None = None,
    session_id: str | None = None,
    status: str | None = None,
    now: datetime | None = None,
    known_instances: set[str] | None = None,
) -> Filters:
    """Filters from raw CLI/query-string values: parses times and validates.

    `known_instances=None` skips the instance-name check.
    """
    now = _aware(now or datetime.now(UTC))
    f = Filters(
        user=user,
        provider=provider,
        model=model,
        client=client,
        since=parse_since(since, now) if isinstance(since, str) else since,
        until=parse_since(until, now) if isinstance(until, str) else until,
        initiator_id=initiator_id,
        session_id=session_id,
        status=status,
    )
    validate_filters(f, known_instances)
    return f


def _where(f: Filters) -> tuple[list[str], list[Any]]:
    """SQL conditions over `i` (aibridge_interceptions); no join, so a page can be cut before any."""
    cond: list[str] = []
    params: list[Any] = []

    def add(sql: str, *values: Any) -> None:
        cond.append(sql)
        params.extend(values)

    if f.user is not None:
        add("i.initiator_id IN (SELECT id FROM users WHERE name = ?)", f.user)
    if f.provider is not None:
        add("(i.provider_name = ? OR i.provider = ?)", f.provider, f.provider)
    if f.model is not None:
        if any(ch in f.model for ch in "*?["):
            add("lower(i.model) GLOB lower(?)", f.model)
        else:
            add("i.model = ?", f.model)
    if f.client is not None:
        add("lower(i.client) = lower(?)", f.client)
    if f.since is not None:
        add("i.started_at >= ?", _aware(f.since))
    if f.until is not None:
        add("i.started_at < ?", _aware(f.until))
    if f.initiator_id is not None:
        add("i.initiator_id = ?::UUID", _uuid(f.initiator_id, "initiator id"))
    if f.session_id is not None:
        add("COALESCE(i.client_session_id, i.thread_root_id::VARCHAR, i.id::VARCHAR) = ?", f.session_id)
    if f.status is not None:
        add("i.status = ?", f.status)
    return cond, params


# --------------------------------------------------------------------------- cursor


def encode_cursor(started_at: datetime | str, interception_id: str) -> str:
    """Opaque cursor for the position *after* (started_at, id) in list order."""
    ts = started_at if isinstance(started_at, str) else _aware(started_at).isoformat()
    raw = orjson.dumps([ts, str(interception_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; ValueError("malformed cursor …") on anything else."""
    try:
        padded = cursor.strip() + "=" * (-len(cursor.strip()) % 4)
        ts, iid = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        return _aware(datetime.fromisoformat(ts)), str(uuid.UUID(iid))
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
    cond, params = _where(f)
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
    iid = _uuid(interception_id, "interception id")
    sql = f"""
        WITH one AS (SELECT * FROM aibridge_interceptions WHERE id = ?::UUID)
        SELECT {_TS_REPLACE} FROM ({interception_facts_sql("one", restrict=True)})
    """
    rows = _dicts(conn.cursor().execute(sql, [iid]))
    if not rows:
        return None
    row = _interception_row(rows[0])
    if initiator_id is not None and row["initiator_id"] != _uuid(initiator_id, "initiator id"):
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
    cond, params = _where(f)
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
            SEMI JOIN top t ON t.session_id = {_I_SESSION_ID} AND t.initiator_id = i.initiator_id
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


_I_SESSION_ID = "COALESCE(i.client_session_id, i.thread_root_id::VARCHAR, i.id::VARCHAR)"


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
            SELECT {_I_SESSION_ID} AS session_id, i.initiator_id::VARCHAR AS initiator_id,
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


# --------------------------------------------------------------------------- table output

# (row key, header). The CLI passes these, or its own subset, to format_table.
INTERCEPTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("started_at", "TIME (UTC)"),
    ("id", "ID"),
    ("user", "USER"),
    ("client", "CLIENT"),
    ("provider_name", "INSTANCE"),
    ("model", "MODEL"),
    ("status", "STATUS"),
    ("duration_ms", "DURATION"),
    ("input_tokens", "IN"),
    ("output_tokens", "OUT"),
    ("cache_read_tokens", "CACHE R"),
    ("cache_write_tokens", "CACHE W"),
    ("cost_usd", "COST"),
    ("prompt", "PROMPT"),
)

SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ended_at", "LAST ACTIVE (UTC)"),
    ("session_id", "SESSION"),
    ("user", "USER"),
    ("client", "CLIENT"),
    ("duration_ms", "SPAN"),
    ("interceptions", "REQS"),
    ("total_tokens", "TOKENS"),
    ("cost_usd", "COST"),
    ("tools", "TOOLS"),
    ("first_prompt", "FIRST PROMPT"),
)

_PROMPT_WIDTH = 48
_TEXT_WIDTH = 40


def format_table(rows: list[dict[str, Any]], columns: Sequence[str | tuple[str, str]]) -> str:
    """Plain-text aligned table (no trailing spaces). Columns are keys or (key, header).

    Timestamps print as "YYYY-MM-DD HH:MM:SS", durations as 850ms/12.3s/4m05s,
    costs as $0.0123 ("-" when unknown), token counts with thousands separators,
    prompts as their first non-empty line, truncated with "…".
    """
    cols = [(c, c.upper()) if isinstance(c, str) else c for c in columns]
    cells = [[_cell(key, row.get(key)) for key, _ in cols] for row in rows]
    right = [_is_numeric(key, [row.get(key) for row in rows]) for key, _ in cols]
    widths = [max([len(h), *(len(r[n]) for r in cells)]) for n, (_, h) in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line([h for _, h in cols])]
    out.extend(line(r) for r in cells)
    if not rows:
        out.append("(no rows)")
    return "\n".join(out)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("prompt", "first_prompt"):
        return _first_line(str(value), _PROMPT_WIDTH)
    if key.endswith("_at") and isinstance(value, str):
        return value[:19].replace("T", " ")
    if key == "duration_ms" and isinstance(value, int | float):
        return _duration(int(value))
    if key.startswith("cost") and isinstance(value, int | float):
        return f"${value:,.4f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, list):
        return _first_line(",".join(map(str, value)), _TEXT_WIDTH)
    if key == "id" or key.endswith("_id"):
        return str(value)  # ids are copied into `show`; never truncate them
    return _first_line(str(value), _TEXT_WIDTH)


def _first_line(text: str, width: int) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    more = line != " ".join(text.split())  # there was more than this one line
    if len(line) > width:
        return line[: width - 1] + "…"
    return line + ("…" if more and len(line) < width else "")


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _is_numeric(key: str, values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


# --------------------------------------------------------------------------- helpers


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"invalid {what} {str(value)[:40]!r}: expected a UUID") from None


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
        return _aware(value).isoformat()
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
