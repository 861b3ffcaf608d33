"""A month of a large organisation's traffic, generated in seconds (see BENCHMARKS.md, "Analysts at scale").

    scripts/analysts-db OUT.duckdb [--rows 2000000] [--days 30] [--end ISO] [--threads N]

Builds a database with aigw's own schema (addons/store/schema.py) entirely in
DuckDB from `range()` inserts: N interceptions spread over `days` UTC days up to
`end` (default: now), with token rows 1:1, prompts 1:1 and tool calls 0.5:1;
4 models (one of them, `gpt-5-mini`, priced only when `unpriced=False`), 3 clients,
300 users with one key each, 20 interceptions per client session. Claude Code
and Codex sessions carry a client session id; Copilot conversations are thread
links (root = the conversation's first interception, parent = the previous one).
About 4% of interceptions failed and 2% were cancelled; sessions are ~10 minutes
long, so some cross midnight UTC, and every 50th Copilot conversation resumes
the next day (a thread across days).

Everything is a deterministic function of the row number, so two runs with the
same arguments produce the same rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from addons.store.schema import DDL, SCHEMA_VERSION
from addons.store.views import create_views

USERS = 300
PER_SESSION = 20
CHUNK = 1_000_000
CLIENTS = ("Claude Code", "Codex", "Copilot")
# (model, provider type, instance, USD per million input / output / cache-read / cache-write tokens)
MODELS = (
    ("claude-sonnet-4-5", "anthropic", "anthropic", 3.0, 15.0, 0.3, 3.75),
    ("claude-haiku-4-5", "anthropic", "anthropic", 1.0, 5.0, 0.1, 1.25),
    ("gpt-5", "openai", "openai", 1.25, 10.0, 0.125, 0.0),
    ("gpt-5-mini", "openai", "openai-eu", 0.25, 2.0, 0.025, 0.0),
)
TOOLS = ("Bash", "Read", "Edit", "Grep", "Glob", "WebFetch", "apply_patch", "mcp__github__search")


def _uuid(expr: str, tag: str) -> str:
    """A deterministic, random-looking UUID from an integer expression."""
    h = f"md5('{tag}' || ({expr}))"
    return (f"(substr({h},1,8)||'-'||substr({h},9,4)||'-4'||substr({h},14,3)||'-8'||substr({h},18,3)"
            f"||'-'||substr({h},21,12))::UUID")


def generate(conn: duckdb.DuckDBPyConnection, rows: int, *, days: int = 30, end: datetime | None = None,
             unpriced: bool = False) -> None:
    """Insert `rows` interceptions (and their children, users and keys) into `conn`'s empty tables."""
    end = (end or datetime.now(UTC)).astimezone(UTC)
    span_s = days * 86400
    start = end - timedelta(seconds=span_s)
    sessions = max(rows // PER_SESSION, 1)
    conn.execute("BEGIN")
    for stmt in DDL:
        conn.execute(stmt)
    conn.execute("INSERT INTO aigw_schema VALUES (?)", [SCHEMA_VERSION])
    conn.execute(f"""
        INSERT INTO users SELECT {_uuid('u', 'user')}, 'user' || lpad(u::VARCHAR, 3, '0'), ?
        FROM range({USERS}) t(u)""", [start])
    conn.execute(f"""
        INSERT INTO api_keys (id, user_id, key_hash, admin, created_at)
        SELECT 'k' || lpad(u::VARCHAR, 3, '0') || 'abcdefgh', {_uuid('u', 'user')}, md5('key' || u), u = 0, ?
        FROM range({USERS}) t(u)""", [start])
    models = ", ".join(f"('{m}', '{p}', '{n}', {a}, {b}, {c}, {d}, {k})" for k, (m, p, n, a, b, c, d) in
                       enumerate(MODELS))
    clients = ", ".join(f"('{c}', {k})" for k, c in enumerate(CLIENTS))
    conn.execute("COMMIT")
    # Generated CHUNK interceptions at a time (memory stays flat); one row per interception with
    # everything the child tables need, dropped after each chunk.
    for lo in range(0, rows, CHUNK):
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE gen AS
            WITH m(model, provider, instance, p_in, p_out, p_cr, p_cw, mk) AS (VALUES {models}),
            c(client, ck) AS (VALUES {clients}),
            base AS (
                SELECT i, i // {PER_SESSION} AS s, i % {PER_SESSION} AS k,
                       hash(i) AS h, hash(i // {PER_SESSION}) AS hs
                FROM range({lo}, {min(lo + CHUNK, rows)}) t(i)
            ),
            shaped AS (
                SELECT *, hs % {USERS} AS u, (s % 3)::INT AS ck,
                       -- Claude Code on Claude models, Codex on GPT models, Copilot on all four
                       (CASE s % 3 WHEN 0 THEN (hs // 7 + k // 8) % 2 WHEN 1 THEN 2 + (hs // 7 + k // 8) % 2
                        ELSE (hs // 7 + k // 8) % 4 END)::INT AS mk,
                       -- session start: spread evenly over the period, jittered; 30 s per turn (all
                       -- before `end`, no two turns of a session at the same time); every 50th Copilot
                       -- conversation resumes 20 h later (a thread across days) if that is before `end`
                       (s * {span_s - 1200}.0 / {sessions} + (hs % 600))
                         + k * 30 + (h % 20)
                         + CASE WHEN s % 150 = 2 AND k >= {PER_SESSION // 2}
                                     AND s * {span_s - 1200}.0 / {sessions} + 73200 < {span_s}
                                THEN 72000 ELSE 0 END AS off_s,
                       h % 100 AS roll
                FROM base
            )
            SELECT sh.*, m.*, c.client,
                   {_uuid('i', 'ic')} AS id,
                   {_uuid('u', 'user')} AS initiator_id,
                   ?::TIMESTAMPTZ + to_microseconds((off_s * 1000000)::BIGINT) AS started_at,
                   CASE WHEN roll < 4 THEN 'failed' WHEN roll < 6 THEN 'cancelled' ELSE 'completed' END AS status,
                   1000 + h % 20000 AS in_tok, 50 + (h // 3) % 2000 AS out_tok,
                   CASE WHEN k > 0 THEN (h // 5) % 40000 ELSE 0 END AS cr_tok,
                   CASE WHEN k % 5 = 0 THEN (h // 11) % 4000 ELSE 0 END AS cw_tok
            FROM shaped sh JOIN m USING (mk) JOIN c USING (ck)
        """, [start])
        price = "p_in * in_tok + p_out * out_tok + p_cr * cr_tok + p_cw * cw_tok"
        unpriced_sql = "model = 'gpt-5-mini'" if unpriced else "false"
        conn.execute(f"""
            INSERT INTO aibridge_interceptions
            SELECT id, initiator_id, 'k' || lpad(u::VARCHAR, 3, '0') || 'abcdefgh', provider, instance, model, client,
                   CASE WHEN ck < 2 THEN 'sess-' || s END,
                   CASE WHEN ck = 2 AND k > 0 THEN {_uuid('i - 1', 'ic')} END,
                   CASE WHEN ck = 2 AND k > 0 THEN {_uuid(f's * {PER_SESSION}', 'ic')} END,
                   'gateway_key', NULL, started_at,
                   started_at + to_milliseconds(500 + h % 60000), status,
                   CASE ck WHEN 0 THEN '{{"user_agent": "claude-cli/2.0.14"}}'
                           WHEN 1 THEN '{{"user_agent": "codex_cli_rs/0.46.0"}}'
                           ELSE '{{"user_agent": "GitHubCopilotChat/0.31.0"}}' END
            FROM gen""")
        conn.execute(f"""
            INSERT INTO aibridge_token_usages
            SELECT id, 'resp_' || i, in_tok, out_tok, cr_tok, cw_tok,
                   CASE WHEN provider = 'openai' THEN '{{"reasoning_tokens": ' || (out_tok // 3) || '}}' END,
                   started_at + INTERVAL 400 millisecond,
                   CASE WHEN NOT ({unpriced_sql}) THEN ({price}) / 1e6 END
            FROM gen""")
        conn.execute("""
            INSERT INTO aibridge_user_prompts
            SELECT id, 'resp_' || i,
                   'Turn ' || k || ' of session ' || s || ': please look at src/module_' || (h % 97)
                   || '.py, explain why test_' || (h % 31) || ' fails and fix it without changing the public API.',
                   started_at + INTERVAL 1 millisecond
            FROM gen""")
        tools = ", ".join(f"('{t}', {k})" for k, t in enumerate(TOOLS))
        conn.execute(f"""
            INSERT INTO aibridge_tool_usages
            SELECT id, 'resp_' || i, 'call_' || i, NULL, tool, '{{"path": "src/module_' || (h % 97) || '.py"}}',
                   CASE WHEN tool LIKE 'mcp__%' THEN 'https://mcp.example.com/github' END,
                   tool LIKE 'mcp__%', CASE WHEN (h // 13) % 100 < 3 THEN 'exit status 1' END,
                   started_at + INTERVAL 300 millisecond
            FROM gen JOIN (VALUES {tools}) t(tool, tk) ON tk = (h // 17) % {len(TOOLS)}
            WHERE i % 2 = 0""")
        conn.execute("DROP TABLE gen")
    create_views(conn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=int, default=2_000_000, help="interceptions (default 2000000)")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--end", help="ISO time of the last interception (default: now)")
    ap.add_argument("--unpriced", action="store_true", help="leave gpt-5-mini unpriced (cost NULL)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; remove it first")
    t0 = time.perf_counter()
    conn = duckdb.connect(str(args.out), config={"threads": args.threads})
    end = datetime.fromisoformat(args.end).astimezone(UTC) if args.end else None
    generate(conn, args.rows, days=args.days, end=end, unpriced=args.unpriced)
    conn.execute("CHECKPOINT")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in (  # type: ignore[index]
        "aibridge_interceptions", "aibridge_token_usages", "aibridge_user_prompts", "aibridge_tool_usages")}
    conn.close()
    size = args.out.stat().st_size / 2**20
    print(f"{args.out}: {counts} in {time.perf_counter() - t0:.1f}s, {size:,.0f} MiB")


if __name__ == "__main__":
    main()
