"""Deterministic synthetic recordings for tests, docs examples and the report.

`seed(conn)` inserts users, api keys and interceptions (with token rows, prompts,
tool calls and thoughts) straight into the tables, pricing token rows with the
real Pricer (genai-prices data, no overrides). It returns a `SeedSummary` whose
aggregates are computed in Python from the generated rows, never by querying,
so tests can compare views and queries against independent numbers.

What the data covers: 5 users (alice is admin), 5 clients, 4 instances over all
three provider types, 10 models incl. one without a known price
(`zeta-coder-preview`), client sessions (Claude Code, Codex) and thread-linked
conversations (Copilot, Cursor), single SDK calls, failed and cancelled
interceptions, cache reads/writes with a 1h split, reasoning tokens, tool calls
(client and injected MCP) with invocation errors, thoughts, and bursts of
interceptions sharing one `started_at` (to exercise cursor tie-breaking).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import orjson

from addons.pricing.pricer import Pricer
from addons.store.schema import DDL
from addons.store.views import create_views

UNKNOWN_MODEL = "zeta-coder-preview"
USERS = ("alice", "bob", "carol", "dave", "erin")
ADMIN_USER = "alice"


@dataclass(frozen=True)
class _Profile:
    client: str
    instances: tuple[tuple[str, str], ...]  # (provider type, instance name)
    models: tuple[str, ...]
    session_header: bool
    tools: tuple[str, ...]
    thought_source: str
    user_agent: str
    route: str


PROFILES: dict[str, _Profile] = {
    "Claude Code": _Profile(
        "Claude Code",
        (("anthropic", "anthropic"), ("anthropic", "anthropic-eu")),
        ("claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001", "claude-opus-4-5"),
        True,
        ("Bash", "Read", "Edit", "Grep", "Glob", "WebFetch"),
        "thinking",
        "claude-cli/2.0.14 (external, cli)",
        "/v1/messages",
    ),
    "Codex": _Profile(
        "Codex",
        (("openai", "openai"),),
        ("gpt-5-codex", "gpt-5", "gpt-5-mini"),
        True,
        ("shell", "apply_patch", "update_plan"),
        "reasoning_summary",
        "codex_cli_rs/0.46.0",
        "/v1/responses",
    ),
    "Copilot": _Profile(
        "Copilot",
        (("copilot", "copilot"),),
        ("claude-sonnet-4.5", "gpt-4.1", "gpt-5-mini"),
        False,
        ("read_file", "run_in_terminal", "replace_string_in_file", "semantic_search"),
        "reasoning_summary",
        "GitHubCopilotChat/0.32.0",
        "/chat/completions",
    ),
    "Cursor": _Profile(
        "Cursor",
        (("openai", "openai"),),
        ("gpt-4.1", UNKNOWN_MODEL),
        False,
        ("edit_file", "codebase_search", "run_terminal_cmd"),
        "reasoning_summary",
        "Cursor/1.7.2",
        "/v1/chat/completions",
    ),
    "OpenAI SDK": _Profile(
        "OpenAI SDK",
        (("openai", "openai"),),
        ("gpt-4o-mini",),
        False,
        (),
        "reasoning_summary",
        "OpenAI/Python 2.3.0",
        "/v1/chat/completions",
    ),
}

# Which clients each user tends to use (weights).
USER_CLIENTS: dict[str, dict[str, int]] = {
    "alice": {"Claude Code": 5, "Codex": 1, "OpenAI SDK": 1},
    "bob": {"Codex": 4, "Copilot": 2},
    "carol": {"Copilot": 4, "Cursor": 2},
    "dave": {"Cursor": 3, "Claude Code": 2},
    "erin": {"Claude Code": 2, "Codex": 2, "Copilot": 1, "OpenAI SDK": 1},
}

MCP_TOOL = ("github__create_issue", "https://mcp.github.example/mcp")

PROMPTS = (
    "Fix the flaky test in tests/unit/test_auth.py",
    "Why does the SSE decoder drop the last event?\nHere is the traceback:\n  File sse.py, line 42",
    "Add retention purge for the token table",
    "Refactor config loading to use pydantic-settings",
    "Write a migration that adds an index on started_at",
    "Explain what this regex does: ^[a-z0-9]+(-[a-z0-9]+)*$",
    "Summarise the open PRs and create an issue for the failing build",
    "Bump duckdb to 1.5.5 and fix the deprecation warnings",
)
ERRORS = ("exit status 1", "file not found: src/main.py", "permission denied", "timeout after 120s")


@dataclass
class SeedSummary:
    """Expected aggregates, computed from the generated rows in Python."""

    start: datetime
    end: datetime
    user_ids: dict[str, str] = field(default_factory=dict)  # name -> UUID text
    api_keys: dict[str, str] = field(default_factory=dict)  # name -> api key id
    admin_user: str = ADMIN_USER
    interceptions: int = 0
    ordered_ids: list[str] = field(default_factory=list)  # started_at DESC, id DESC
    token_rows: int = 0
    prompts: int = 0
    thoughts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0  # sum over priced token rows
    unpriced_rows: int = 0
    unpriced_requests: int = 0
    unpriced_models: set[str] = field(default_factory=set)
    requests_by_user: Counter[str] = field(default_factory=Counter)
    requests_by_client: Counter[str] = field(default_factory=Counter)
    requests_by_model: Counter[str] = field(default_factory=Counter)
    requests_by_instance: Counter[str] = field(default_factory=Counter)
    requests_by_day: Counter[date] = field(default_factory=Counter)
    status_counts: Counter[str] = field(default_factory=Counter)
    cost_by_user: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    cost_by_model: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    cost_by_day: defaultdict[date, float] = field(default_factory=lambda: defaultdict(float))
    tokens_by_user: Counter[str] = field(default_factory=Counter)  # all kinds
    sessions: dict[tuple[str, str], int] = field(default_factory=dict)  # (session_id, user) -> count
    tool_calls: Counter[str] = field(default_factory=Counter)
    tool_errors: Counter[str] = field(default_factory=Counter)
    tool_calls_by_client: Counter[tuple[str, str]] = field(default_factory=Counter)
    tool_errors_by_client: Counter[tuple[str, str]] = field(default_factory=Counter)
    burst_started_at: datetime | None = None  # one instant shared by several interceptions

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


class _Gen:
    def __init__(self, rng: random.Random, pricer: Pricer, summary: SeedSummary) -> None:
        self.rng = rng
        self.pricer = pricer
        self.s = summary
        self.rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self._order: list[tuple[datetime, int, str]] = []

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # -- one interception -------------------------------------------------------

    def interception(
        self,
        user: str,
        prof: _Profile,
        instance: tuple[str, str],
        model: str,
        started: datetime,
        *,
        session_key: str | None,
        parent: str | None,
        root: str | None,
        prompt: str | None,
    ) -> str:
        rng, s = self.rng, self.s
        iid = self.uuid()
        roll = rng.random()
        status = "failed" if roll < 0.06 else "cancelled" if roll < 0.09 else "completed"
        ended = started + timedelta(milliseconds=rng.randint(400, 45_000))
        ptype, pname = instance
        meta: dict[str, Any] = {"user_agent": prof.user_agent, "username": user, "route": prof.route}
        meta["http_status"] = 502 if status == "failed" else 200
        if status == "failed":
            meta["error"] = "upstream returned 502 Bad Gateway"
        byok = prof.client == "Copilot"
        self.rows["aibridge_interceptions"].append(
            (
                iid, s.user_ids[user], None if byok else s.api_keys[user], ptype, pname, model, prof.client,
                session_key, parent, root, "byok" if byok else "centralized",
                "gho_…a1b2" if byok else None, started, ended, status, meta,
            )
        )  # fmt: skip
        self._account(iid, user, prof, pname, model, started, status, session_key, root)
        if prompt is not None:
            self.rows["aibridge_user_prompts"].append((iid, f"resp_{iid[:8]}", prompt, started))
            s.prompts += 1
        if status == "completed" or (status == "cancelled" and rng.random() < 0.5):
            self.tokens(iid, user, ptype, model, started, ended, partial=status == "cancelled")
        if status == "completed":
            self.tools(iid, prof, ended)
            if rng.random() < 0.4:
                self.rows["aibridge_model_thoughts"].append(
                    (iid, f"Let me look at the failing code path first ({model}).",
                     {"source": prof.thought_source}, ended)
                )  # fmt: skip
                s.thoughts += 1
        return iid

    def _account(
        self, iid: str, user: str, prof: _Profile, pname: str, model: str, started: datetime,
        status: str, session_key: str | None, root: str | None,
    ) -> None:  # fmt: skip
        s = self.s
        s.interceptions += 1
        s.requests_by_user[user] += 1
        s.requests_by_client[prof.client] += 1
        s.requests_by_model[model] += 1
        s.requests_by_instance[pname] += 1
        s.requests_by_day[started.astimezone(UTC).date()] += 1
        s.status_counts[status] += 1
        session_id = session_key or root or iid
        s.sessions[(session_id, user)] = s.sessions.get((session_id, user), 0) + 1
        self._order.append((started, uuid.UUID(iid).int, iid))

    def tokens(
        self, iid: str, user: str, ptype: str, model: str, started: datetime, ended: datetime, *, partial: bool
    ) -> None:
        rng, s = self.rng, self.s
        meta: dict[str, Any] = {}
        claude = "claude" in model
        if claude:
            inp, out = rng.randint(5, 3_000), rng.randint(50, 4_000)
            cache_read = rng.choice((0, rng.randint(10_000, 150_000), rng.randint(20_000, 120_000)))
            cache_write = rng.choice((0, 0, rng.randint(500, 20_000)))
            if cache_write and rng.random() < 0.3:
                meta["cache_ephemeral_1h_input"] = cache_write // 2
                meta["cache_ephemeral_5m_input"] = cache_write - cache_write // 2
            if rng.random() < 0.02:  # a long prompt crossing the 200k tier of Sonnet 4.5
                inp += 210_000
            if rng.random() < 0.5:
                meta["thinking_tokens"] = rng.randint(0, out)
        else:
            inp, out = rng.randint(200, 20_000), rng.randint(50, 6_000)
            cache_read = rng.choice((0, rng.randint(1_000, 60_000)))
            cache_write = 0
            # Responses API rows (Codex) carry output_reasoning, Chat Completions rows reasoning_tokens.
            key = "output_reasoning" if model in ("gpt-5-codex", "gpt-5") else "reasoning_tokens"
            meta[key] = rng.randint(0, out) if model.startswith(("gpt-5", "o")) else 0
        if partial:
            out //= 4
            meta = {k: v for k, v in meta.items() if k.startswith("cache")}
        cost = self.pricer.cost(ptype, model, inp, out, cache_read, cache_write, meta)
        self.rows["aibridge_token_usages"].append(
            (iid, f"resp_{iid[:8]}", inp, out, cache_read, cache_write, meta, ended, cost)
        )
        s.token_rows += 1
        s.input_tokens += inp
        s.output_tokens += out
        s.cache_read_tokens += cache_read
        s.cache_write_tokens += cache_write
        s.reasoning_tokens += sum(meta.get(k, 0) for k in ("reasoning_tokens", "output_reasoning", "thinking_tokens"))
        s.tokens_by_user[user] += inp + out + cache_read + cache_write
        if cost is None:
            s.unpriced_rows += 1
            s.unpriced_requests += 1
            s.unpriced_models.add(model)
            return
        s.cost_usd += cost
        s.cost_by_user[user] += cost
        s.cost_by_model[model] += cost
        s.cost_by_day[started.astimezone(UTC).date()] += cost

    def tools(self, iid: str, prof: _Profile, when: datetime) -> None:
        rng, s = self.rng, self.s
        if not prof.tools:
            return
        for n in range(rng.choice((0, 0, 1, 1, 2, 3))):
            tool, server, injected = rng.choice(prof.tools), None, False
            if rng.random() < 0.08:
                (tool, server), injected = MCP_TOOL, True
            error = rng.choice(ERRORS) if rng.random() < 0.1 else None
            call_id = f"call_{iid[:8]}_{n}"
            args = orjson.dumps({"command": "pytest -q"} if "shell" in tool.lower() else {"path": "src/app.py"})
            self.rows["aibridge_tool_usages"].append(
                (iid, f"resp_{iid[:8]}", call_id, None, tool, args.decode(), server, injected, error,
                 when + timedelta(milliseconds=n))
            )  # fmt: skip
            s.tool_calls[tool] += 1
            s.tool_calls_by_client[(tool, prof.client)] += 1
            if error is not None:
                s.tool_errors[tool] += 1
                s.tool_errors_by_client[(tool, prof.client)] += 1

    # -- sessions -------------------------------------------------------------

    def session(self, user: str, start: datetime) -> None:
        rng = self.rng
        weights = USER_CLIENTS[user]
        client = rng.choices(list(weights), weights=list(weights.values()))[0]
        prof = PROFILES[client]
        instance = rng.choice(prof.instances)
        model = rng.choice(prof.models)
        if client == "OpenAI SDK":  # scripts: one call, no session, no thread
            self.interception(user, prof, instance, model, start, session_key=None, parent=None, root=None,
                              prompt=rng.choice(PROMPTS))  # fmt: skip
            return
        session_key = self.uuid() if prof.session_header else None
        t, parent, root = start, None, None
        for k in range(rng.randint(1, 8)):
            new_thread = k == 0 or rng.random() < 0.25
            if new_thread:
                parent = root = None
            prompt = rng.choice(PROMPTS) if new_thread else None
            iid = self.interception(user, prof, instance, model, t, session_key=session_key,
                                    parent=parent, root=root, prompt=prompt)  # fmt: skip
            root = root or iid
            parent = iid
            t += timedelta(seconds=rng.randint(5, 600), microseconds=rng.randint(0, 999_999))

    def burst(self, user: str, at: datetime) -> None:
        """Parallel sub-agent calls: several interceptions with the very same started_at."""
        prof = PROFILES["Claude Code"]
        session_key = self.uuid()
        for _ in range(5):
            self.interception(user, prof, prof.instances[0], prof.models[1], at, session_key=session_key,
                              parent=None, root=None, prompt=None)  # fmt: skip
        self.s.burst_started_at = at

    def ordered_ids(self) -> list[str]:
        return [iid for _, _, iid in sorted(self._order, reverse=True)]


def _insert(conn: duckdb.DuckDBPyConnection, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Bulk insert through one JSON parameter per table.

    executemany binds every value separately, and duckdb's Python binding tries
    to import pandas for each one (slow when pandas is absent); a single JSON
    document cast to the table's row type is ~100x faster.
    """
    for table, values in rows.items():
        if not values:
            continue
        columns = conn.execute(f"DESCRIBE {table}").fetchall()
        names = [c[0] for c in columns]
        row_type = ", ".join(f'"{name}" {ctype}' for name, ctype, *_ in columns)
        doc = orjson.dumps([dict(zip(names, v, strict=True)) for v in values]).decode()
        conn.execute(f"INSERT INTO {table} SELECT unnest(?::JSON::STRUCT({row_type})[], recursive := true)", [doc])


def seed(
    conn: duckdb.DuckDBPyConnection,
    *,
    days: int = 14,
    seed: int = 42,
    end: datetime | None = None,
    pricer: Pricer | None = None,
) -> SeedSummary:
    """Insert `days` days of activity ending at `end` (default: now, floored to the hour).

    Applies the DDL and views first (both idempotent). Deterministic for a given
    (days, seed, end). Prices use genai-prices only (no override file) unless a
    `pricer` is passed.
    """
    for statement in DDL:
        conn.execute(statement)
    create_views(conn)
    end = (end or datetime.now(UTC)).astimezone(UTC)
    if end.minute or end.second or end.microsecond:
        end = end.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    rng = random.Random(seed)
    summary = SeedSummary(start=start, end=end)
    gen = _Gen(rng, pricer or Pricer(overrides=[]), summary)
    _users(conn, gen, start)
    for day in range(days):
        base = start + timedelta(days=day)
        for user in USERS:
            for _ in range(rng.randint(0, 3)):
                offset = timedelta(seconds=rng.randint(0, 22 * 3600), microseconds=rng.randint(0, 999_999))
                gen.session(user, base + offset)
    gen.burst("erin", start + timedelta(hours=10, microseconds=123_456))
    _insert(conn, gen.rows)
    summary.ordered_ids = gen.ordered_ids()
    return summary


def _users(conn: duckdb.DuckDBPyConnection, gen: _Gen, created: datetime) -> None:
    for name in USERS:
        uid = gen.uuid()
        key_id = f"aigw_{name[:3]}{gen.rng.randrange(16**6):06x}"
        key_hash = hashlib.sha256(f"secret-{name}-{key_id}".encode()).hexdigest()
        gen.s.user_ids[name] = uid
        gen.s.api_keys[name] = key_id
        conn.execute("INSERT INTO users VALUES (?, ?, ?)", [uid, name, created])
        conn.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, NULL, ?)",
            [key_id, uid, key_hash, name == ADMIN_USER, created, created + timedelta(days=1)],
        )
