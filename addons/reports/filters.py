"""Which interceptions an audit listing covers: `--since`/`--until` times, the `Filters` of the CLI and
the HTTP API (validated, with one-line `ValueError`s meant to be printed as is) and their SQL conditions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from addons.settings.durations import parse_duration
from addons.settings.values import ConfigError

__all__ = ["I_SESSION_ID", "PROVIDER_TYPES", "STATUSES", "Filters", "build_filters", "conditions", "parse_since",
           "parse_uuid", "utc", "validate_filters"]

PROVIDER_TYPES = frozenset({"anthropic", "openai", "copilot"})
STATUSES = frozenset({"completed", "failed", "cancelled"})

# store/views.py's SESSION_ID over interceptions aliased `i`.
I_SESSION_ID = "COALESCE(i.client_session_id, i.thread_root_id::VARCHAR, i.id::VARCHAR)"

_TIME_HELP = "use a duration like 30d, 12h, 90m or an ISO date/time like 2025-06-01 or 2025-06-01T12:00:00Z"


def parse_since(text: str, now: datetime) -> datetime:
    """Parse a `--since`/`--until` value into an aware UTC datetime.

    Accepts a duration back from `now` ("30d", "12h", "90m", "45s", "2w"; settings/durations.py), an ISO
    date ("2025-06-01", midnight UTC) or an ISO timestamp ("2025-06-01T12:00:00Z";
    naive times are taken as UTC). Raises ValueError with a one-line message.
    """
    raw = (text or "").strip()
    if not raw:
        raise ValueError(f"empty time value: {_TIME_HELP}")
    now = utc(now)
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
        return utc(datetime.fromisoformat(raw.replace("z", "Z")))
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
        parse_uuid(f.initiator_id, "initiator id")
    if f.status is not None and f.status not in STATUSES:
        raise ValueError(f"unknown status {f.status!r} (use one of: {', '.join(sorted(STATUSES))})")
    if f.since is not None and f.until is not None and utc(f.since) >= utc(f.until):
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
    now = utc(now or datetime.now(UTC))
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


def conditions(f: Filters) -> tuple[list[str], list[Any]]:
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
        add("i.started_at >= ?", utc(f.since))
    if f.until is not None:
        add("i.started_at < ?", utc(f.until))
    if f.initiator_id is not None:
        add("i.initiator_id = ?::UUID", parse_uuid(f.initiator_id, "initiator id"))
    if f.session_id is not None:
        add(f"{I_SESSION_ID} = ?", f.session_id)
    if f.status is not None:
        add("i.status = ?", f.status)
    return cond, params


def utc(dt: datetime) -> datetime:
    """`dt` in UTC; a naive time is taken as UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_uuid(value: str, what: str) -> str:
    """The canonical text of a UUID; ValueError naming `what` otherwise."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"invalid {what} {str(value)[:40]!r}: expected a UUID") from None
