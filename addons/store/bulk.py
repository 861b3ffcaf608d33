"""Bulk SQL: each table's columns, the row built from a record in that order, and the statements.

Binding a Python list as a query parameter costs ~0.2 ms per element in
DuckDB's Python client and `executemany` ~0.5 ms per row, so each table's rows
are sent as ONE JSON text (an array of columns, encoded by orjson) and expanded
inside DuckDB:

    INSERT INTO t (a, b) SELECT UNNEST(j[1]::UUID[]), UNNEST(j[2]::VARCHAR[])
    FROM (SELECT ?::JSON::JSON[] AS j)

That is several hundred thousand rows/s (see scripts/bench-recorder) and is
plain SQL, so it works unchanged against an attached DuckLake catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import duckdb
import orjson

from addons.flow.records import InterceptionStart, ThoughtRecord, TokenUsageRecord, ToolUsageRecord
from addons.store.spool import json_default

_JSON_OPTS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=json_default, option=_JSON_OPTS).decode()


def ts(dt: datetime) -> str:
    """A timestamp as the text a `?::TIMESTAMPTZ` parameter takes."""
    return dumps(dt).strip('"')


def _unnest_select(cols: Iterable[tuple[str, str]], aliases: bool = False) -> str:
    parts = []
    for i, (name, typ) in enumerate(cols, start=1):
        expr = f"UNNEST(j[{i}]::{typ}[])"
        parts.append(f"{expr} AS {name}" if aliases else expr)
    return f"SELECT {', '.join(parts)} FROM (SELECT ?::JSON::JSON[] AS j)"


def _insert_sql(table: str, cols: tuple[tuple[str, str], ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(c for c, _ in cols)}) {_unnest_select(cols)}"


def columns(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as the one JSON parameter of these statements: an array of columns."""
    return dumps(list(zip(*rows, strict=True)))


# (column, DuckDB type) per table; each row builder below returns its values in this order.
_INTERCEPTION_COLS = (
    ("id", "UUID"),
    ("initiator_id", "UUID"),
    ("api_key_id", "VARCHAR"),
    ("provider", "VARCHAR"),
    ("provider_name", "VARCHAR"),
    ("model", "VARCHAR"),
    ("client", "VARCHAR"),
    ("client_session_id", "VARCHAR"),
    ("thread_parent_id", "UUID"),
    ("thread_root_id", "UUID"),
    ("credential_kind", "VARCHAR"),
    ("credential_hint", "VARCHAR"),
    ("started_at", "TIMESTAMPTZ"),
    ("ended_at", "TIMESTAMPTZ"),
    ("status", "VARCHAR"),
    ("metadata", "JSON"),
)


def interception_row(r: InterceptionStart, parent: str | None, root: str | None, ended_at: datetime | None,
                     status: str | None, metadata: dict[str, Any]) -> tuple[Any, ...]:
    return (r.id, r.initiator_id, r.api_key_id, r.provider, r.provider_name, r.model, r.client or "Unknown",
            r.client_session_id, parent, root, r.credential_kind, r.credential_hint, r.started_at, ended_at, status,
            metadata)


_TOKEN_COLS = (
    ("interception_id", "UUID"),
    ("provider_response_id", "VARCHAR"),
    ("input_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
    ("cache_read_input_tokens", "BIGINT"),
    ("cache_write_input_tokens", "BIGINT"),
    ("metadata", "JSON"),
    ("created_at", "TIMESTAMPTZ"),
    ("cost_usd", "DOUBLE"),
)


def token_row(r: TokenUsageRecord, cost: float | None) -> tuple[Any, ...]:
    return (r.interception_id, r.provider_response_id, r.input_tokens, r.output_tokens, r.cache_read_input_tokens,
            r.cache_write_input_tokens, r.metadata, r.created_at, cost)


_PROMPT_COLS = (
    ("interception_id", "UUID"),
    ("provider_response_id", "VARCHAR"),
    ("prompt", "VARCHAR"),
    ("created_at", "TIMESTAMPTZ"),
)


def prompt_row(interception_id: str, response_id: str | None, prompt: str, created_at: datetime) -> tuple[Any, ...]:
    return (interception_id, response_id, prompt, created_at)


_TOOL_COLS = (
    ("interception_id", "UUID"),
    ("provider_response_id", "VARCHAR"),
    ("provider_tool_call_id", "VARCHAR"),
    ("provider_item_id", "VARCHAR"),
    ("tool", "VARCHAR"),
    ("input", "VARCHAR"),
    ("server_url", "VARCHAR"),
    ("injected", "BOOLEAN"),
    ("invocation_error", "VARCHAR"),
    ("created_at", "TIMESTAMPTZ"),
)


def tool_row(r: ToolUsageRecord) -> tuple[Any, ...]:
    return (r.interception_id, r.provider_response_id, r.provider_tool_call_id, r.provider_item_id, r.tool, r.input,
            r.server_url, r.injected, r.invocation_error, r.created_at)


_THOUGHT_COLS = (
    ("interception_id", "UUID"),
    ("content", "VARCHAR"),
    ("metadata", "JSON"),
    ("created_at", "TIMESTAMPTZ"),
)


def thought_row(r: ThoughtRecord) -> tuple[Any, ...]:
    return (r.interception_id, r.content, r.metadata, r.created_at)


SQL_INTERCEPTIONS = _insert_sql("aibridge_interceptions", _INTERCEPTION_COLS)
SQL_TOKENS = _insert_sql("aibridge_token_usages", _TOKEN_COLS)
SQL_PROMPTS = _insert_sql("aibridge_user_prompts", _PROMPT_COLS)
SQL_TOOLS = _insert_sql("aibridge_tool_usages", _TOOL_COLS)
SQL_THOUGHTS = _insert_sql("aibridge_model_thoughts", _THOUGHT_COLS)

# An end whose start was written by an earlier batch: rows (id, ended_at, status, metadata patch).
_END_COLS = (("id", "UUID"), ("ended_at", "TIMESTAMPTZ"), ("status", "VARCHAR"), ("metadata", "JSON"))
SQL_ENDS = (
    "UPDATE aibridge_interceptions AS i SET ended_at = e.ended_at, status = e.status, "
    "metadata = json_merge_patch(coalesce(i.metadata, '{}'::JSON), e.metadata) "
    f"FROM ({_unnest_select(_END_COLS, aliases=True)}) AS e WHERE i.id = e.id"
)
# Prompts are recorded when the request is accepted, before the response id is known: the end fills it
# in. Rows (interception id, response id), then the oldest such prompt's created_at.
_PROMPT_ID_COLS = (("id", "UUID"), ("response_id", "VARCHAR"))
SQL_PROMPT_IDS = (
    "UPDATE aibridge_user_prompts AS p SET provider_response_id = e.response_id "
    f"FROM ({_unnest_select(_PROMPT_ID_COLS, aliases=True)}) AS e "
    # The time bound lets DuckDB skip every older row group (appends are in time order).
    "WHERE p.interception_id = e.id AND p.provider_response_id IS NULL AND p.created_at >= ?::TIMESTAMPTZ"
)


def insert(cur: duckdb.DuckDBPyConnection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    if rows:
        cur.execute(sql, [columns(rows)])
