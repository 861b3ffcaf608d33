"""Audit queries: filters, cursor pagination, whole interceptions, sessions, table output."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, time, timedelta

import duckdb
import pytest

from addons.cli.table import INTERCEPTION_COLUMNS, SESSION_COLUMNS, format_table
from addons.reports.audit import decode_cursor, encode_cursor, get_interception, list_interceptions, list_sessions
from addons.reports.filters import Filters, build_filters, parse_since, validate_filters
from tests.seed import UNKNOWN_MODEL, SeedSummary

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
INSTANCES = {"anthropic", "anthropic-eu", "openai", "copilot"}



def walk(conn: duckdb.DuckDBPyConnection, f: Filters, limit: int) -> tuple[list[str], list[int]]:
    """All ids page by page; returns ids and page sizes."""
    ids: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        rows, cursor = list_interceptions(conn, f, limit=limit, after_id=cursor)
        ids.extend(r["id"] for r in rows)
        sizes.append(len(rows))
        if cursor is None:
            return ids, sizes
        assert len(sizes) < 10_000


# ------------------------------------------------------------------ parse_since


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", NOW - timedelta(days=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("90m", NOW - timedelta(minutes=90)),
        ("45s", NOW - timedelta(seconds=45)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 7D ", NOW - timedelta(days=7)),
        ("2025-06-01", datetime(2025, 6, 1, tzinfo=UTC)),
        ("2025-06-01T12:30:00Z", datetime(2025, 6, 1, 12, 30, tzinfo=UTC)),
        ("2025-06-01T12:30:00+02:00", datetime(2025, 6, 1, 10, 30, tzinfo=UTC)),
        ("2025-06-01 12:30", datetime(2025, 6, 1, 12, 30, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    got = parse_since(text, NOW)
    assert got == expected
    assert got.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterdayish", "", "30x", "-5d", "d30", "2025-13-01", "99999999999d"])
def test_parse_since_errors_are_one_clear_line(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_since(text, NOW)
    message = str(info.value)
    assert "\n" not in message
    assert "30d" in message or "too far" in message
    if text.strip():
        assert repr(text.strip()) in message


# ------------------------------------------------------------------ validation


def test_unknown_instance_is_rejected_with_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown provider instance 'bedrock' \(known: anthropic, "):
        validate_filters(Filters(provider="bedrock"), INSTANCES)


def test_provider_type_and_known_instance_are_accepted() -> None:
    validate_filters(Filters(provider="anthropic-eu"), INSTANCES)
    validate_filters(Filters(provider="copilot"), {"my-copilot"})


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (Filters(since=NOW, until=NOW - timedelta(days=1)), "--since must be earlier"),
        (Filters(initiator_id="bob"), "invalid initiator id 'bob'"),
        (Filters(status="exploded"), "unknown status"),
        (Filters(user="  "), "empty user filter"),
    ],
)
def test_bad_filters(filters: Filters, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_filters(filters, INSTANCES)


def test_build_filters_parses_and_validates() -> None:
    f = build_filters(user="bob", since="7d", until="2025-06-15", now=NOW, known_instances=INSTANCES)
    assert f.since == NOW - timedelta(days=7)
    assert f.until == datetime(2025, 6, 15, tzinfo=UTC)
    with pytest.raises(ValueError, match="invalid time 'yesterdayish'"):
        build_filters(since="yesterdayish", now=NOW)
    with pytest.raises(ValueError, match="unknown provider instance"):
        build_filters(provider="nope", known_instances=INSTANCES)
    assert build_filters(provider="anything").provider == "anything"  # no instance list: not checked


# ------------------------------------------------------------------ cursor


def test_cursor_round_trip() -> None:
    ts = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    iid = "0b7c6a9e-1f0e-4c55-9d55-2d3f0e6f7a11"
    assert decode_cursor(encode_cursor(ts, iid)) == (ts, iid)


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!!",
        "",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'["2025-06-01T00:00:00+00:00"]').decode(),
        base64.urlsafe_b64encode(b'["2025-06-01T00:00:00+00:00", "not-a-uuid"]').decode(),
        base64.urlsafe_b64encode(b'["yesterday", "0b7c6a9e-1f0e-4c55-9d55-2d3f0e6f7a11"]').decode(),
    ],
)
def test_malformed_cursor(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary], cursor: str) -> None:
    conn, _ = seeded
    with pytest.raises(ValueError, match="malformed cursor"):
        list_interceptions(conn, Filters(), after_id=cursor)


# ------------------------------------------------------------------ pagination


@pytest.mark.parametrize("limit", [1000, 7, 50])
def test_pages_cover_everything_once_in_stable_order(
    seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary], limit: int
) -> None:
    conn, s = seeded
    ids, sizes = walk(conn, Filters(), limit)
    assert ids == s.ordered_ids  # started_at DESC, id DESC; no gaps, no duplicates
    full, rest = divmod(s.interceptions, limit)
    expected = [limit] * full + ([rest] if rest else [])
    assert sizes == expected


def test_exact_multiple_of_limit_ends_with_none(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    n = s.requests_by_user["bob"]
    rows, cursor = list_interceptions(conn, Filters(user="bob"), limit=n)
    assert len(rows) == n and cursor is None
    rows, cursor = list_interceptions(conn, Filters(user="bob"), limit=n - 1)
    assert len(rows) == n - 1 and cursor is not None
    last, cursor2 = list_interceptions(conn, Filters(user="bob"), limit=n - 1, after_id=cursor)
    assert len(last) == 1 and cursor2 is None
    assert last[0]["id"] not in {r["id"] for r in rows}


def test_ties_on_started_at_are_broken_by_id(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    assert s.burst_started_at is not None
    window = Filters(since=s.burst_started_at, until=s.burst_started_at + timedelta(microseconds=1))
    ids, sizes = walk(conn, window, 2)
    assert len(ids) == len(set(ids)) >= 5
    assert ids == sorted(ids, reverse=True)
    assert sizes[:2] == [2, 2]


def test_limit_bounds(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, _ = seeded
    for bad in (0, -1, 1001):
        with pytest.raises(ValueError, match="limit must be between 1 and 1000"):
            list_interceptions(conn, Filters(), limit=bad)


# ------------------------------------------------------------------ filters on data


def test_filters_select_the_right_rows(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    assert len(walk(conn, Filters(user="carol"), 1000)[0]) == s.requests_by_user["carol"]
    assert len(walk(conn, Filters(client="claude code"), 1000)[0]) == s.requests_by_client["Claude Code"]
    assert len(walk(conn, Filters(provider="anthropic-eu"), 1000)[0]) == s.requests_by_instance["anthropic-eu"]
    assert len(walk(conn, Filters(provider="copilot"), 1000)[0]) == s.requests_by_instance["copilot"]
    assert len(walk(conn, Filters(model=UNKNOWN_MODEL), 1000)[0]) == s.requests_by_model[UNKNOWN_MODEL]
    claude = sum(n for m, n in s.requests_by_model.items() if m.startswith("claude-"))
    assert len(walk(conn, Filters(model="Claude-*"), 1000)[0]) == claude
    assert len(walk(conn, Filters(status="failed"), 1000)[0]) == s.status_counts["failed"]
    uid = s.user_ids["dave"]
    rows = walk(conn, Filters(initiator_id=uid), 1000)[0]
    assert len(rows) == s.requests_by_user["dave"]
    assert walk(conn, Filters(user="nobody"), 10) == ([], [0])


def test_time_window(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    day = sorted(s.requests_by_day)[3]
    start = datetime.combine(day, time(0), UTC)
    f = Filters(since=start, until=start + timedelta(days=1))
    rows = walk(conn, f, 1000)[0]
    assert len(rows) == s.requests_by_day[day]


def test_rows_are_json_and_complete(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    rows, _ = list_interceptions(conn, Filters(), limit=200)
    json.dumps(rows)
    row = rows[0]
    assert row["user"] in s.user_ids
    assert datetime.fromisoformat(row["started_at"]).tzinfo is not None
    assert isinstance(row["metadata"], dict) and "user_agent" in row["metadata"]
    assert {"tokens", "tools"} & row.keys() == set()  # not expanded by default
    unknown = [r for r in rows if r["model"] == UNKNOWN_MODEL and r["responses"]]
    assert unknown and all(r["cost_usd"] is None for r in unknown)


def test_expanded_rows_carry_children(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, _ = seeded
    rows, _ = list_interceptions(conn, Filters(), limit=100, expand=True)
    json.dumps(rows)
    for r in rows:
        assert sum(t["input_tokens"] for t in r["tokens"]) == r["input_tokens"]
        assert len(r["tools"]) == r["tool_calls"]
        assert len(r["thoughts"]) == r["thought_count"]
    assert any(r["prompts"] for r in rows)


# ------------------------------------------------------------------ one interception


def test_get_interception_whole(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, _ = seeded
    iid = conn.execute(
        "SELECT interception_id::VARCHAR FROM aibridge_tool_usages WHERE invocation_error IS NOT NULL LIMIT 1"
    ).fetchone()[0]  # type: ignore[index]
    one = get_interception(conn, iid)
    assert one is not None
    json.dumps(one)
    assert one["id"] == iid
    assert any(t["invocation_error"] for t in one["tools"])
    assert one["tokens"] and one["tokens"][0]["cost_usd"] == pytest.approx(one["cost_usd"])
    assert isinstance(one["tokens"][0]["metadata"], dict)
    assert sorted(one["tool_names"]) == sorted({t["tool"] for t in one["tools"]})
    assert get_interception(conn, iid.upper()) is not None


def test_get_interception_missing_invalid_and_foreign(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    assert get_interception(conn, "00000000-0000-4000-8000-000000000000") is None
    with pytest.raises(ValueError, match="invalid interception id 'nope'"):
        get_interception(conn, "nope")
    iid = s.ordered_ids[0]
    owner = get_interception(conn, iid)["user"]  # type: ignore[index]
    other = next(u for u in s.user_ids if u != owner)
    assert get_interception(conn, iid, initiator_id=s.user_ids[owner]) is not None
    assert get_interception(conn, iid, initiator_id=s.user_ids[other]) is None


# ------------------------------------------------------------------ sessions


def test_list_sessions(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    expected = {sid: n for (sid, user), n in s.sessions.items() if user == "bob"}
    rows = list_sessions(conn, Filters(user="bob"), limit=1000)
    json.dumps(rows)
    assert {r["session_id"]: r["interceptions"] for r in rows} == expected
    assert all(r["user"] == "bob" for r in rows)
    ends = [r["ended_at"] for r in rows]
    assert ends == sorted(ends, reverse=True)
    assert len(list_sessions(conn, Filters(user="bob"), limit=3)) == 3
    everyone = list_sessions(conn, Filters(), limit=1000)
    assert len(everyone) == len(s.sessions)
    assert sum(r["interceptions"] for r in everyone) == s.interceptions


def test_session_filter_on_interceptions(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    (sid, _user), n = max(s.sessions.items(), key=lambda kv: kv[1])
    ids = walk(conn, Filters(session_id=sid), 1000)[0]
    assert len(ids) == n


# ------------------------------------------------------------------ table output


def test_format_table_layout() -> None:
    rows = [
        {"started_at": "2025-06-01T12:00:05.123456+00:00", "user": "alice", "duration_ms": 12_345,
         "input_tokens": 1234567, "cost_usd": 0.01234, "prompt": "Fix the bug\nwith details\n"},
        {"started_at": "2025-06-01T12:00:06+00:00", "user": "bob", "duration_ms": 850,
         "input_tokens": 5, "cost_usd": None, "prompt": "x" * 200},
    ]  # fmt: skip
    cols = [("started_at", "TIME"), ("user", "USER"), ("duration_ms", "DUR"), ("input_tokens", "IN"),
            ("cost_usd", "COST"), ("prompt", "PROMPT")]  # fmt: skip
    out = format_table(rows, cols)
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "USER", "DUR", "IN", "COST", "PROMPT"]
    assert "2025-06-01 12:00:05" in lines[1] and "12.3s" in lines[1] and "1,234,567" in lines[1]
    assert "$0.0123" in lines[1] and "Fix the bug…" in lines[1]
    assert "850ms" in lines[2] and " - " in lines[2] and "x" * 47 + "…" in lines[2]
    assert "x" * 48 not in out
    # numbers are right-aligned: the IN column ends at the same offset on every line
    end = lines[0].index(" IN ") + 3
    assert lines[1][:end].endswith(" 1,234,567") and lines[2][:end].endswith(" 5")
    assert all(line == line.rstrip() for line in lines)


def test_format_table_with_real_rows(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, _ = seeded
    rows, _ = list_interceptions(conn, Filters(), limit=5)
    text = format_table(rows, INTERCEPTION_COLUMNS)
    assert len(text.splitlines()) == 6
    assert rows[0]["id"] in text  # ids are never truncated
    sessions = list_sessions(conn, Filters(), limit=3)
    assert len(format_table(sessions, SESSION_COLUMNS).splitlines()) == 4
    assert format_table([], INTERCEPTION_COLUMNS).endswith("(no rows)")
