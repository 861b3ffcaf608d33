"""The numbers of the usage report (`aigw report`, html.py) for one window [since, now).

Data comes from the daily rollup for closed days and from the base tables for
the rest of the window (addons/store/rollup.py), with the same per-interception
rules as the `aibridge_interceptions_v` view, so the report also works on a
read-only database where the views were never created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from addons.store.rollup import usage_window
from addons.store.views import token_sums

if TYPE_CHECKING:  # for type hints only: whoever opens the connection has loaded DuckDB
    import duckdb

__all__ = ["ReportData", "bucket", "bucket_days", "load"]

WEEKLY_AFTER_DAYS = 120  # longer windows are bucketed by week so bars stay readable


@dataclass
class ReportData:
    since: datetime
    now: datetime
    totals: dict[str, Any]
    by_day_model: list[dict[str, Any]]
    by_day: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    by_user: list[dict[str, Any]]
    by_client: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    unpriced: list[dict[str, Any]]
    buckets: list[date] = field(default_factory=list)
    weekly: bool = False


# The sums of a group of _usage rows (usage_window's table).
_SUMS = f"""COALESCE(sum(requests), 0)::BIGINT AS requests,
        COALESCE(sum(failed), 0)::BIGINT AS failed,
        COALESCE(sum(cancelled), 0)::BIGINT AS cancelled,
        {token_sums(reasoning=False, empty_zero=True)},
        COALESCE(sum(tool_calls), 0)::BIGINT AS tool_calls,
        COALESCE(sum(tool_errors), 0)::BIGINT AS tool_errors,
        count(DISTINCT initiator_id) AS users"""
_USER_NAME = "COALESCE(u.name, x.initiator_id::VARCHAR)"


def load(conn: duckdb.DuckDBPyConnection, since: datetime, now: datetime) -> ReportData:
    cur = conn.cursor()
    # The window's usage per (day, user, instance, model, client), its sessions and tool calls, from
    # the daily rollup plus the base tables for what is not rolled up (addons/store/rollup.py); the
    # temporary tables belong to this cursor's connection and go with it.
    usage_window(cur, since, now)
    totals = _rows(cur, f"SELECT {_SUMS} FROM _usage")[0]
    totals["sessions"] = _rows(cur, "SELECT count(DISTINCT session_id) AS n FROM _sessions")[0]["n"]
    data = ReportData(
        since=since,
        now=now,
        totals=totals,
        by_day_model=_rows(
            cur,
            "SELECT day, COALESCE(model, '(unknown)') AS model, sum(total_tokens)::BIGINT AS tokens, "
            "COALESCE(sum(cost_usd), 0) AS cost FROM _usage GROUP BY ALL",
        ),
        by_day=_rows(cur, f"SELECT day, {_SUMS} FROM _usage GROUP BY day ORDER BY day"),
        by_model=_rows(
            cur,
            f"SELECT COALESCE(model, '(unknown)') AS model, "
            f"string_agg(DISTINCT provider_name, ', ' ORDER BY provider_name) AS instances, {_SUMS} "
            "FROM _usage GROUP BY ALL ORDER BY total_tokens DESC, model",
        ),
        by_user=_by_user(cur),
        by_client=_rows(cur, f"SELECT client AS name, {_SUMS} FROM _usage GROUP BY ALL ORDER BY requests DESC, name"),
        tools=_rows(
            cur,
            "SELECT tool, sum(calls)::BIGINT AS calls, sum(errors)::BIGINT AS errors, "
            "sum(mcp_calls)::BIGINT AS mcp_calls, count(DISTINCT client) AS clients "
            "FROM _tools GROUP BY tool ORDER BY calls DESC, tool",
        ),
        unpriced=_rows(
            cur,
            "SELECT provider, COALESCE(model, '(unknown)') AS model, sum(unpriced_requests)::BIGINT AS requests, "
            "sum(unpriced_tokens)::BIGINT AS tokens FROM _usage WHERE unpriced_requests > 0 "
            "GROUP BY ALL ORDER BY tokens DESC",
        ),
    )
    cur.close()
    return data


def _rows(cur: duckdb.DuckDBPyConnection, select: str) -> list[dict[str, Any]]:
    c = cur.execute(select)
    names = [d[0] for d in c.description or ()]
    return [dict(zip(names, r, strict=True)) for r in c.fetchall()]


def _by_user(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Usage per user, each with their number of sessions."""
    sessions_by_user = {
        r["name"]: r["n"]
        for r in _rows(
            cur,
            f"SELECT {_USER_NAME} AS name, count(DISTINCT session_id) AS n "
            "FROM _sessions x LEFT JOIN users u ON u.id = x.initiator_id GROUP BY ALL",
        )
    }
    by_user = _rows(
        cur,
        f"SELECT {_USER_NAME} AS name, {_SUMS} FROM _usage x LEFT JOIN users u ON u.id = x.initiator_id "
        "GROUP BY ALL ORDER BY cost_usd DESC NULLS LAST, total_tokens DESC, name",
    )
    for r in by_user:
        r["sessions"] = sessions_by_user.get(r["name"], 0)
    return by_user


def bucket_days(data: ReportData) -> None:
    """The chart buckets of the window: its UTC days, or weeks (from Monday) past WEEKLY_AFTER_DAYS."""
    first = data.since.astimezone(UTC).date()
    last = (data.now - timedelta(microseconds=1)).astimezone(UTC).date()
    n = max((last - first).days + 1, 1)
    data.weekly = n > WEEKLY_AFTER_DAYS
    days = [first + timedelta(days=k) for k in range(n)]
    data.buckets = sorted({bucket(d, data.weekly) for d in days})


def bucket(d: date, weekly: bool) -> date:
    return d - timedelta(days=d.weekday()) if weekly else d
