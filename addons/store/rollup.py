"""Daily usage rollup: what the report needs, per closed UTC day, kept current on read.

A month of a large organisation is millions of interceptions; the report only
needs sums per (day, user, instance, model, client), the distinct sessions per
(day, user) and tool calls per (day, tool, client). `usage_window()` assembles
those three relations for any window [since, now) into temporary tables of the
caller's cursor:

- whole UTC days that are closed (over, no interception still open) come from the
  `aigw_rollup_*` tables when their stored interception count still matches the
  base table (so rows deleted by retention, or a day that got late rows, are
  noticed and recomputed);
- every other part of the window (the partial first day, today, days not rolled
  up yet) is computed from the base tables with the same SQL;
- on a writable connection, missing or stale closed days are rolled up first, in
  one transaction, off the writer's hot path: the gateway's recorder never
  maintains the rollup, the first report after a day closes does. A read-only
  connection (the CLI while no gateway runs) just computes what is missing.

Results are identical to aggregating the base tables directly
(tests/unit/test_analyst_fastpaths.py): costs keep the per-interception rule
(an interception's cost is NULL unless every response is priced), as the
interceptions with an unpriced response are left out of the cost sums.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, date, datetime, time, timedelta

import duckdb

from addons.store.views import SESSION_ID, stored_token_sums, total_tokens, utc_day

__all__ = ["ROLLUP_TABLES", "invalidate", "refresh", "usage_window"]

log = logging.getLogger("aigw.store")

ROLLUP_TABLES = ("aigw_rollup_usage", "aigw_rollup_sessions", "aigw_rollup_tools", "aigw_rollup_days")

# Requests per group from the interceptions alone; token and tool sums per group by joining their
# rows to the window's interceptions (no per-interception aggregate of millions of ids). The cost
# rule is per interception, so interceptions with an unpriced response (`bad`, usually few) are
# found first and their priced rows left out of `cost_usd`.
_DIMS = "day, initiator_id, provider, provider_name, model, client"
_SAME_GROUP = " AND ".join(
    f"{{x}}.{c} IS NOT DISTINCT FROM r.{c}" if c == "model" else f"{{x}}.{c} = r.{c}" for c in _DIMS.split(", ")
)

_USAGE_COLS = (
    f"{_DIMS}, requests, failed, cancelled, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "total_tokens, cost_usd, unpriced_responses, unpriced_requests, unpriced_tokens, tool_calls, tool_errors"
)

_USAGE = f"""
    WITH sel AS MATERIALIZED (
        SELECT id, initiator_id, provider, provider_name, model, client, status, {utc_day('started_at')} AS day
        FROM aibridge_interceptions WHERE {{where}}
    ),
    bad AS (
        SELECT DISTINCT interception_id AS id FROM aibridge_token_usages
        WHERE cost_usd IS NULL AND interception_id IN (SELECT id FROM sel)
    ),
    req AS (
        SELECT {_DIMS},
               count(*) AS requests,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE id IN (SELECT id FROM bad)) AS unpriced_requests
        FROM sel GROUP BY ALL
    ),
    tok AS (
        SELECT s.day, s.initiator_id, s.provider, s.provider_name, s.model, s.client,
               {stored_token_sums('t.')},
               sum(t.cost_usd) FILTER (WHERE b.id IS NULL) AS cost_usd,
               count(*) - count(t.cost_usd) AS unpriced_responses,
               sum({total_tokens('t', stored=True)}) FILTER (WHERE b.id IS NOT NULL) AS unpriced_tokens
        FROM aibridge_token_usages t JOIN sel s ON s.id = t.interception_id
        LEFT JOIN bad b ON b.id = t.interception_id
        GROUP BY ALL
    ),
    tu AS (
        SELECT s.day, s.initiator_id, s.provider, s.provider_name, s.model, s.client,
               count(*) AS tool_calls, count(u.invocation_error) AS tool_errors
        FROM aibridge_tool_usages u JOIN sel s ON s.id = u.interception_id
        GROUP BY ALL
    )
    SELECT r.day, r.initiator_id, r.provider, r.provider_name, r.model, r.client,
           r.requests, r.failed, r.cancelled,
           COALESCE(t.input_tokens, 0) AS input_tokens,
           COALESCE(t.output_tokens, 0) AS output_tokens,
           COALESCE(t.cache_read_tokens, 0) AS cache_read_tokens,
           COALESCE(t.cache_write_tokens, 0) AS cache_write_tokens,
           COALESCE({total_tokens('t')}, 0)::BIGINT AS total_tokens,
           t.cost_usd,
           COALESCE(t.unpriced_responses, 0) AS unpriced_responses,
           r.unpriced_requests,
           COALESCE(t.unpriced_tokens, 0)::BIGINT AS unpriced_tokens,
           COALESCE(u.tool_calls, 0) AS tool_calls,
           COALESCE(u.tool_errors, 0) AS tool_errors
    FROM req r
    LEFT JOIN tok t ON {_SAME_GROUP.format(x="t")}
    LEFT JOIN tu u ON {_SAME_GROUP.format(x="u")}"""

_SESSIONS = f"""
    SELECT DISTINCT {utc_day('started_at')} AS day, initiator_id, {SESSION_ID} AS session_id
    FROM aibridge_interceptions WHERE {{where}}"""

_TOOLS = f"""
    WITH sel AS (
        SELECT id, client, {utc_day('started_at')} AS day FROM aibridge_interceptions WHERE {{where}}
    )
    SELECT s.day, t.tool, s.client,
           count(*) AS calls,
           count(t.invocation_error) AS errors,
           count(*) FILTER (WHERE t.server_url IS NOT NULL) AS mcp_calls
    FROM aibridge_tool_usages t JOIN sel s ON s.id = t.interception_id
    GROUP BY ALL"""

# (rollup table, temp table, SELECT producing its rows, columns)
_PARTS = (
    ("aigw_rollup_usage", "_usage", _USAGE, _USAGE_COLS),
    ("aigw_rollup_sessions", "_sessions", _SESSIONS, "day, initiator_id, session_id"),
    ("aigw_rollup_tools", "_tools", _TOOLS, "day, tool, client, calls, errors, mcp_calls"),
)


def usage_window(cur: duckdb.DuckDBPyConnection, since: datetime, now: datetime) -> None:
    """Create temp tables `_usage`, `_sessions` and `_tools` on `cur` for started_at in [since, now).

    `_usage` has the columns of aigw_rollup_usage (one row per day, user, instance,
    model and client; a group may span several rows), `_sessions` (day,
    initiator_id, session_id) rows (possibly repeated), `_tools` the calls per
    (day, tool, client). Rolls up closed days first when `cur` can write.
    """
    rollup = _has_rollup(cur)
    rolled = _rolled_days(cur, since, now) if rollup else []
    days = [d.isoformat() for d in rolled]
    for table, temp, select, cols in _PARTS:
        # The rolled-up days, then what they leave out of the window, from the base tables.
        source = table if rollup else f"({select.format(where='false')})"
        cur.execute(f"CREATE OR REPLACE TEMP TABLE {temp} AS SELECT {cols} FROM {source} "
                    "WHERE day IN (SELECT unnest(?::DATE[]))", [days])
        for where, params in _batches(_uncovered(since, now, rolled)):
            cur.execute(f"INSERT INTO {temp} SELECT {cols} FROM ({select.format(where=where)})", params)


def refresh(conn: duckdb.DuckDBPyConnection) -> int:
    """Roll up every closed day not rolled up yet (or stale); returns how many days are rolled up.

    The gateway calls this in the background (addons/chain/analytics.py) so that reports,
    including the CLI's on a read-only connection, find closed days ready.
    """
    cur = conn.cursor()
    try:
        if not _has_rollup(cur):
            return 0
        row = cur.execute(f"SELECT min({utc_day('started_at')}) FROM aibridge_interceptions").fetchone()
        first = row[0] if row and row[0] is not None else datetime.now(UTC).date()
        with _BUILDING:  # days retention emptied: reports never show them, so their rollup goes too
            cur.execute("BEGIN TRANSACTION")
            for table in ROLLUP_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE day < ?", [first])
            cur.execute("COMMIT")
        _rolled_days(cur, _midnight(first), datetime.now(UTC))
        return cur.execute("SELECT count(*) FROM aigw_rollup_days").fetchone()[0]  # type: ignore[index,no-any-return]
    finally:
        cur.close()


def invalidate(cur: duckdb.DuckDBPyConnection) -> None:
    """Forget every rolled-up day (after base rows changed in place, e.g. a reprice)."""
    if _has_rollup(cur):
        for table in ROLLUP_TABLES:
            cur.execute(f"DELETE FROM {table}")


def _has_rollup(cur: duckdb.DuckDBPyConnection) -> bool:
    row = cur.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name IN (SELECT unnest(?::VARCHAR[]))", [list(ROLLUP_TABLES)]
    ).fetchone()
    return bool(row and row[0] == len(ROLLUP_TABLES))


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time.min, UTC)


def _rolled_days(cur: duckdb.DuckDBPyConnection, since: datetime, now: datetime) -> list[date]:
    """Closed whole days of the window whose rollup is current (rolling missing ones up if possible)."""
    first = since.astimezone(UTC).date()
    if _midnight(first) < since:
        first += timedelta(days=1)
    # A day is closed once it is over in real time, not only in the window.
    end = min(now, datetime.now(UTC)).astimezone(UTC).date()
    if first >= end:
        return []
    counts = {
        d: (n, open_)
        for d, n, open_ in cur.execute(
            f"SELECT {utc_day('started_at')} AS day, count(*), count(*) - count(ended_at) "
            "FROM aibridge_interceptions WHERE started_at >= ? AND started_at < ? GROUP BY day",
            [_midnight(first), _midnight(end)],
        ).fetchall()
    }
    closed = {d for d, (_, open_) in counts.items() if open_ == 0}
    # Days without interceptions need no rows; stale entries (all rows deleted since) must go.
    empty = {first + timedelta(days=k) for k in range((end - first).days)} - set(counts)

    def state() -> tuple[set[date], set[date], set[date]]:
        stored = dict(cur.execute("SELECT day, interceptions FROM aigw_rollup_days WHERE day >= ? AND day < ?",
                                  [first, end]).fetchall())
        current = {d for d in closed if stored.get(d) == counts[d][0]}
        return set(stored), current, (closed - current) | (set(stored) & empty)

    stored, current, stale = state()
    writable = cur.execute("SELECT current_setting('access_mode')").fetchone() != ("read_only",)
    # One builder per process (DuckDB allows one writing process): two transactions inserting the
    # same new day would both commit. A report that finds a build under way computes those days
    # from the base tables instead of waiting.
    if stale and writable and _BUILDING.acquire(blocking=False):
        try:
            stored, current, stale = state()  # another thread may have just built them
            if not stale or _build(cur, sorted(stale), counts):
                return sorted(closed | empty)
        finally:
            _BUILDING.release()
    return sorted(current | (empty - stored))


_BUILDING = threading.Lock()


def _build(cur: duckdb.DuckDBPyConnection, days: list[date], counts: dict[date, tuple[int, int]]) -> bool:
    """Recompute the rollup of `days` in one transaction; False if that failed (rolled back)."""
    iso = [d.isoformat() for d in days]
    cur.execute("BEGIN TRANSACTION")
    try:
        for table, _, select, cols in _PARTS:
            cur.execute(f"DELETE FROM {table} WHERE day IN (SELECT unnest(?::DATE[]))", [iso])
            for where, params in _batches([(_midnight(d), _midnight(d + timedelta(days=1))) for d in days]):
                cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM ({select.format(where=where)})",
                            params)
        cur.execute("DELETE FROM aigw_rollup_days WHERE day IN (SELECT unnest(?::DATE[]))", [iso])
        filled = [d for d in days if d in counts]
        cur.execute("INSERT INTO aigw_rollup_days SELECT unnest(?::DATE[]), unnest(?::BIGINT[]), now()",
                    [[d.isoformat() for d in filled], [counts[d][0] for d in filled]])
        cur.execute("COMMIT")
    except duckdb.Error as e:  # e.g. retention deleting rows of those days at the same time
        cur.execute("ROLLBACK")
        log.info("daily rollup not updated (computed from the base tables instead): %s", e)
        return False
    return True


# Base rows are aggregated a few days at a time, so memory stays flat whatever the window; small
# spans (a partial first day and today) share one statement, as each statement scans the child tables.
CHUNK = timedelta(days=3)


def _uncovered(since: datetime, now: datetime, rolled: list[date]) -> list[tuple[datetime, datetime]]:
    """[since, now) minus the rolled-up days, as time spans."""
    spans: list[tuple[datetime, datetime]] = []
    start = since
    for d in rolled:
        lo, hi = _midnight(d), _midnight(d + timedelta(days=1))
        if lo > start:
            spans.append((start, lo))
        start = max(start, hi)
    if start < now:
        spans.append((start, now))
    return spans


def _batches(spans: list[tuple[datetime, datetime]]) -> list[tuple[str, list[datetime]]]:
    """(predicate on started_at, parameters) covering `spans`, each batch at most CHUNK long in total."""
    pieces: list[tuple[datetime, datetime]] = []
    for lo, hi in spans:
        while lo < hi:  # cut at UTC midnights
            cut = min(hi, _midnight(lo.astimezone(UTC).date() + CHUNK))
            pieces.append((lo, cut))
            lo = cut
    batches: list[list[tuple[datetime, datetime]]] = []
    for piece in pieces:
        if batches and sum((hi - lo for lo, hi in batches[-1]), piece[1] - piece[0]) <= CHUNK:
            batches[-1].append(piece)
        else:
            batches.append([piece])
    return [(" OR ".join("(started_at >= ? AND started_at < ?)" for _ in batch),
             [t for piece in batch for t in piece]) for batch in batches]
