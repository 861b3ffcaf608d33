"""What the database says about prices: models recorded without one, and repricing.

No genai-prices here: `aigw prices missing` reads the database only.
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any

import duckdb
import orjson

from addons.store import rollup
from addons.store.views import total_tokens

if TYPE_CHECKING:
    from addons.pricing.pricer import Pricer


def missing_prices(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Models seen in token rows whose cost is NULL, most tokens first.

    Each dict: provider (type), model, instances (list of provider_name), requests
    (interceptions), tokens (all kinds), first_seen / last_seen (ISO 8601, UTC).
    """
    rows = (
        conn.cursor()
        .execute(
            f"""
        SELECT i.provider,
               i.model,
               list(DISTINCT i.provider_name ORDER BY i.provider_name) AS instances,
               count(DISTINCT i.id) AS requests,
               sum({total_tokens("t", stored=True)})::BIGINT AS tokens,
               timezone('UTC', min(t.created_at)) AS first_seen,
               timezone('UTC', max(t.created_at)) AS last_seen
        FROM aibridge_token_usages t
        JOIN aibridge_interceptions i ON i.id = t.interception_id
        WHERE t.cost_usd IS NULL
        GROUP BY i.provider, i.model
        ORDER BY tokens DESC, i.provider, i.model
        """
        )
        .fetchall()
    )
    keys = ("provider", "model", "instances", "requests", "tokens", "first_seen", "last_seen")
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        for k in ("first_seen", "last_seen"):
            item[k] = item[k].replace(tzinfo=UTC).isoformat()
        out.append(item)
    return out


def reprice(conn: duckdb.DuckDBPyConnection, pricer: Pricer, *, only_missing: bool = True) -> int:
    """Recompute `cost_usd` (by default only where it is NULL); returns rows updated.

    Use after adding an override for a model `missing_prices` listed. Writes, so
    while the gateway runs it must execute on the gateway's writer connection.
    """
    cur = conn.cursor()
    where = "WHERE t.cost_usd IS NULL" if only_missing else ""
    # One transaction: rowids read here must still name the same rows at UPDATE time.
    cur.execute("BEGIN TRANSACTION")
    try:
        updated = _reprice_in_tx(cur, pricer, where, only_missing)
        if updated:
            rollup.invalidate(cur)  # rolled-up costs are stale now; the next report rebuilds them
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    cur.execute("COMMIT")
    return updated


def _reprice_in_tx(cur: duckdb.DuckDBPyConnection, pricer: Pricer, where: str, only_missing: bool) -> int:
    rows = cur.execute(
        f"""
        SELECT t.rowid, i.provider, i.model, t.input_tokens, t.output_tokens,
               t.cache_read_input_tokens, t.cache_write_input_tokens, t.metadata
        FROM aibridge_token_usages t JOIN aibridge_interceptions i ON i.id = t.interception_id
        {where}
        """
    ).fetchall()
    updates = []
    for rid, provider, model, inp, out, cr, cw, meta in rows:
        cost = pricer.cost(provider, model, inp, out, cr, cw, _load_meta(meta))
        if cost is not None or not only_missing:
            updates.append((rid, cost))
    if not updates:
        return 0
    cur.execute("CREATE OR REPLACE TEMP TABLE _aigw_reprice (rid BIGINT, cost DOUBLE)")
    cur.executemany("INSERT INTO _aigw_reprice VALUES (?, ?)", updates)
    cur.execute(
        "UPDATE aibridge_token_usages SET cost_usd = r.cost FROM _aigw_reprice r "
        "WHERE aibridge_token_usages.rowid = r.rid"
    )
    cur.execute("DROP TABLE _aigw_reprice")
    return len(updates)


def _load_meta(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
