"""Crash recovery: interceptions a gateway that stopped abruptly left open end as 'failed'.

The writer runs this once at start (after replaying its spool), for what was
started before this run; on a lake shared by replicas, a survivor runs it for a
replica whose heartbeat stopped (addons/chain/replicas.py).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from addons.store.bulk import dumps, ts

RECOVERED_ERROR = "gateway stopped before the interception ended"


def recover_open_interceptions(conn: duckdb.DuckDBPyConnection, now: datetime,
                               before: datetime | None = None, replica: str | None = None) -> int:
    """End interceptions a crash left open (status 'failed'), those started before `before` if given,
    only `replica`'s when given (a shared lake: the others' are still streaming); returns how many."""
    mine = "" if replica is None else " AND json_extract_string(metadata, '$.replica') = ?"
    row = conn.execute(
        "UPDATE aibridge_interceptions SET ended_at = ?::TIMESTAMPTZ, status = 'failed', "
        "metadata = json_merge_patch(coalesce(metadata, '{}'::JSON), ?::JSON) WHERE ended_at IS NULL "
        "AND started_at < ?::TIMESTAMPTZ" + mine,
        [ts(now), dumps({"error": RECOVERED_ERROR}), ts(before or now), *([replica] if replica else [])],
    ).fetchone()
    return int(row[0]) if row else 0
