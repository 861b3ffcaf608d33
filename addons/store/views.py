"""Analyst views over the recorded tables (documented in docs/SCHEMA.md).

Conventions shared by every view:
- `day` is the UTC calendar day of `started_at` (independent of the session TimeZone);
- token sums are BIGINT; `total_tokens` = input + output + cache read + cache write;
- `cost_usd` sums only priced rows; `unpriced_responses` counts token rows whose
  model has no known price, so a partial sum is never mistaken for a full one.
  At the single-interception level `cost_usd` is NULL unless every row is priced.

The per-interception and per-session SELECTs are also exposed as functions so
the audit queries and the report can run them over a pre-filtered relation
(a page of interceptions) instead of the whole table, and without needing the
views to exist on a read-only database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "SESSION_ID", "VIEWS", "VIEW_NAMES", "create_views", "interception_facts_sql", "session_summary_sql",
    "stored_token_sums", "token_sums", "total_tokens", "utc_day",
]

# A session is the client's session id, else the thread's root, else the interception itself.
SESSION_ID = "COALESCE(client_session_id, thread_root_id::VARCHAR, id::VARCHAR)"


def utc_day(column: str) -> str:
    """The UTC calendar day of a TIMESTAMPTZ column, whatever the session TimeZone.

    Same value as CAST(timezone('UTC', col) AS DATE) at a tenth of its cost: that
    goes through an ICU calendar per row, this reads the stored epoch microseconds.
    """
    return f"CAST(make_timestamp(epoch_us({column})) AS DATE)"


# Reasoning counters are informational (already inside output_tokens); the wire
# parsers use one of these metadata keys depending on the provider.
_REASONING = (
    "COALESCE(TRY_CAST(json_extract_string(metadata, '$.reasoning_tokens') AS BIGINT),"
    " TRY_CAST(json_extract_string(metadata, '$.output_reasoning') AS BIGINT),"
    " TRY_CAST(json_extract_string(metadata, '$.thinking_tokens') AS BIGINT), 0)"
)


def total_tokens(alias: str, *, stored: bool = False) -> str:
    """Total tokens of a row: input + output + cache read + cache write (input excludes the cache
    tokens, DESIGN §6). `alias`: the row's table alias; `stored`: aibridge_token_usages' own column
    names (`cache_read_input_tokens`), else the sums' (`cache_read_tokens`)."""
    cache = "input_tokens" if stored else "tokens"
    return (f"{alias}.input_tokens + {alias}.output_tokens + {alias}.cache_read_{cache} "
            f"+ {alias}.cache_write_{cache}")


def stored_token_sums(alias: str = "") -> str:
    """Sums of aibridge_token_usages rows (`alias`: its table alias and a dot), named as in the facts."""
    return ",\n".join(f"sum({alias}{column})::BIGINT AS {name}" for column, name in (
        ("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
        ("cache_read_input_tokens", "cache_read_tokens"), ("cache_write_input_tokens", "cache_write_tokens")))


def token_sums(*, reasoning: bool = True, empty_zero: bool = False) -> str:
    """Sums of a group of interception facts (or rollup rows): tokens, cost and unpriced responses,
    in the views' column order. `empty_zero`: 0 rather than NULL over no rows; the cost stays NULL
    when nothing in the group is priced."""
    names = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
             *(["reasoning_tokens"] if reasoning else []), "total_tokens"]

    def bigint(name: str) -> str:
        return f"{f'COALESCE(sum({name}), 0)' if empty_zero else f'sum({name})'}::BIGINT AS {name}"

    return ",\n".join([*map(bigint, names), "sum(cost_usd) AS cost_usd", bigint("unpriced_responses")])


# Per interception: its token rows, tool calls, thoughts and first prompt ({only}: see `interception_facts_sql`).
_CHILD_SUMS = f"""
    LEFT JOIN (
        SELECT interception_id,
               count(*) AS responses,
               {stored_token_sums()},
               sum({_REASONING})::BIGINT AS reasoning_tokens,
               -- NULL unless every response of the interception is priced
               CASE WHEN count(cost_usd) = count(*) THEN sum(cost_usd) END AS cost_usd,
               count(*) - count(cost_usd) AS unpriced_responses
        FROM aibridge_token_usages {{only_tokens}}
        GROUP BY interception_id
    ) t ON t.interception_id = i.id
    LEFT JOIN (
        SELECT interception_id,
               count(*) AS tool_calls,
               count(invocation_error) AS tool_errors,
               list(DISTINCT tool ORDER BY tool) AS tool_names
        FROM aibridge_tool_usages {{only_tools}}
        GROUP BY interception_id
    ) tu ON tu.interception_id = i.id
    LEFT JOIN (
        SELECT interception_id, count(*) AS thought_count
        FROM aibridge_model_thoughts {{only_thoughts}}
        GROUP BY interception_id
    ) th ON th.interception_id = i.id
    LEFT JOIN (
        SELECT interception_id, arg_min(prompt, created_at) AS prompt
        FROM aibridge_user_prompts {{only_prompts}}
        GROUP BY interception_id
    ) p ON p.interception_id = i.id
    """

_FACT_COLUMNS = f"""
        i.id, i.initiator_id, u.name AS user_name, i.api_key_id,
        i.provider, i.provider_name, i.model, i.client,
        i.client_session_id, i.thread_parent_id, i.thread_root_id,
        COALESCE(i.client_session_id, i.thread_root_id::VARCHAR, i.id::VARCHAR) AS session_id,
        i.credential_kind, i.credential_hint,
        i.started_at, i.ended_at, i.status, i.metadata,
        {utc_day("i.started_at")} AS day,
        date_diff('millisecond', i.started_at, i.ended_at) AS duration_ms,
        COALESCE(t.responses, 0) AS responses,
        COALESCE(t.input_tokens, 0) AS input_tokens,
        COALESCE(t.output_tokens, 0) AS output_tokens,
        COALESCE(t.cache_read_tokens, 0) AS cache_read_tokens,
        COALESCE(t.cache_write_tokens, 0) AS cache_write_tokens,
        COALESCE(t.reasoning_tokens, 0) AS reasoning_tokens,
        COALESCE({total_tokens("t")}, 0) AS total_tokens,
        t.cost_usd,
        COALESCE(t.unpriced_responses, 0) AS unpriced_responses,
        COALESCE(tu.tool_calls, 0) AS tool_calls,
        COALESCE(tu.tool_errors, 0) AS tool_errors,
        COALESCE(tu.tool_names, []::VARCHAR[]) AS tool_names,
        COALESCE(th.thought_count, 0) AS thought_count,
        p.prompt"""


def interception_facts_sql(source: str = "aibridge_interceptions", *, restrict: bool = False) -> str:
    """One row per interception of `source` with user name, session id, sums and first prompt.

    `source` is a table/CTE with the columns of aibridge_interceptions. With
    `restrict`, child tables are pre-filtered to the source's ids (cheap pages).
    """
    def only(table: str) -> str:
        # Row ids first, on the id column alone; then only those rows' wide columns (prompts, JSON).
        if not restrict:
            return ""
        return f"WHERE rowid IN (SELECT rowid FROM {table} WHERE interception_id IN (SELECT id FROM {source}))"

    children = _CHILD_SUMS.format(
        only_tokens=only("aibridge_token_usages"), only_tools=only("aibridge_tool_usages"),
        only_thoughts=only("aibridge_model_thoughts"), only_prompts=only("aibridge_user_prompts"))
    return f"""
    SELECT{_FACT_COLUMNS}
    FROM {source} i
    LEFT JOIN users u ON u.id = i.initiator_id{children}"""


def session_summary_sql(facts: str = "aibridge_interceptions_v") -> str:
    """One row per (session_id, initiator_id) over a relation shaped like interception facts."""
    return f"""
    SELECT
        session_id,
        CASE WHEN bool_or(client_session_id IS NOT NULL) THEN 'client'
             WHEN count(*) > 1 OR bool_or(thread_root_id IS NOT NULL) THEN 'thread'
             ELSE 'single' END AS session_kind,
        initiator_id,
        any_value(user_name) AS user_name,
        arg_min(client, started_at) AS client,
        list(DISTINCT provider_name ORDER BY provider_name) AS provider_names,
        list(DISTINCT model ORDER BY model) FILTER (WHERE model IS NOT NULL) AS models,
        min(started_at) AS started_at,
        max(COALESCE(ended_at, started_at)) AS ended_at,
        date_diff('millisecond', min(started_at), max(COALESCE(ended_at, started_at))) AS duration_ms,
        count(*) AS interceptions,
        count(*) FILTER (WHERE status = 'failed') AS failed,
        count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
        {token_sums()},
        sum(tool_calls)::BIGINT AS tool_calls,
        sum(tool_errors)::BIGINT AS tool_errors,
        list_sort(list_distinct(flatten(list(tool_names)))) AS tools,
        arg_min(prompt, started_at) FILTER (WHERE prompt IS NOT NULL) AS first_prompt
    FROM {facts}
    GROUP BY session_id, initiator_id
    """


_INTERCEPTIONS_V = f"CREATE OR REPLACE VIEW aibridge_interceptions_v AS {interception_facts_sql()}"

_SESSIONS = f"CREATE OR REPLACE VIEW aibridge_sessions AS {session_summary_sql()}"

_USAGE_DAILY = f"""
CREATE OR REPLACE VIEW aibridge_usage_daily AS
SELECT
    day, initiator_id, user_name, provider, provider_name, model,
    count(*) AS requests,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
    {token_sums()}
FROM aibridge_interceptions_v
GROUP BY ALL
"""

_TOOL_CALLS_V = f"""
CREATE OR REPLACE VIEW aibridge_tool_calls_v AS
SELECT
    tu.*,
    {utc_day("tu.created_at")} AS day,
    tu.invocation_error IS NOT NULL AS failed,
    tu.server_url IS NOT NULL AS is_mcp,
    i.initiator_id, u.name AS user_name, i.client, i.provider, i.provider_name, i.model,
    COALESCE(i.client_session_id, i.thread_root_id::VARCHAR, i.id::VARCHAR) AS session_id
FROM aibridge_tool_usages tu
JOIN aibridge_interceptions i ON i.id = tu.interception_id
LEFT JOIN users u ON u.id = i.initiator_id
"""

_TOOL_STATS = """
CREATE OR REPLACE VIEW aibridge_tool_stats AS
SELECT
    tool, client,
    count(*) AS calls,
    count(invocation_error) AS errors,
    count(invocation_error) / count(*) AS error_rate,
    count(*) FILTER (WHERE injected) AS injected_calls,
    count(*) FILTER (WHERE is_mcp) AS mcp_calls,
    count(DISTINCT interception_id) AS interceptions,
    count(DISTINCT initiator_id) AS users,
    min(created_at) AS first_seen,
    max(created_at) AS last_seen
FROM aibridge_tool_calls_v
GROUP BY tool, client
"""

_CACHE_EFFICIENCY = """
CREATE OR REPLACE VIEW aibridge_cache_efficiency AS
SELECT
    day, provider, provider_name, model,
    count(*) AS requests,
    sum(input_tokens)::BIGINT AS input_tokens,
    sum(cache_read_tokens)::BIGINT AS cache_read_tokens,
    sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
    -- share of all prompt tokens that were served from the cache
    sum(cache_read_tokens)
        / NULLIF(sum(input_tokens + cache_read_tokens + cache_write_tokens), 0) AS cache_hit_ratio
FROM aibridge_interceptions_v
GROUP BY ALL
"""

_USER_SUMMARY = """
CREATE OR REPLACE VIEW aibridge_user_summary AS
SELECT
    initiator_id, user_name,
    count(*) AS requests,
    count(DISTINCT session_id) AS sessions,
    list(DISTINCT client ORDER BY client) AS clients,
    list(DISTINCT model ORDER BY model) FILTER (WHERE model IS NOT NULL) AS models,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    sum(total_tokens)::BIGINT AS total_tokens,
    sum(cost_usd) AS cost_usd,
    sum(unpriced_responses)::BIGINT AS unpriced_responses,
    sum(tool_calls)::BIGINT AS tool_calls
FROM aibridge_interceptions_v
GROUP BY initiator_id, user_name
"""

# Dependency order: later views read earlier ones.
VIEWS: tuple[str, ...] = (
    _INTERCEPTIONS_V,
    _USAGE_DAILY,
    _SESSIONS,
    _TOOL_CALLS_V,
    _TOOL_STATS,
    _CACHE_EFFICIENCY,
    _USER_SUMMARY,
)

VIEW_NAMES: tuple[str, ...] = (
    "aibridge_interceptions_v",
    "aibridge_usage_daily",
    "aibridge_sessions",
    "aibridge_tool_calls_v",
    "aibridge_tool_stats",
    "aibridge_cache_efficiency",
    "aibridge_user_summary",
)


def create_views(conn: duckdb.DuckDBPyConnection) -> None:
    """Create or replace every view (idempotent; needs the tables from schema.DDL)."""
    for statement in VIEWS:
        conn.execute(statement)
