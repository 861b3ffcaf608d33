"""The HTML report: self-contained, correct numbers, charts, empty and hostile data."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, time, timedelta
from html.parser import HTMLParser

import duckdb

from addons.reports.html import render_report
from addons.store.schema import DDL
from tests.seed import UNKNOWN_MODEL, SeedSummary, seed


class _Checker(HTMLParser):
    """Collects tags and checks nesting, so broken markup fails the test."""

    VOID = frozenset({"meta", "br", "img", "link", "input", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>, open: {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    return checker



def test_report_is_self_contained(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    page = render_report(conn, s.end - timedelta(days=30), s.end)
    doc = parse(page)
    assert page.startswith("<!doctype html>")
    assert "script" not in doc.tags and "link" not in doc.tags and "img" not in doc.tags
    # the only URL is the SVG namespace identifier, which is never fetched
    urls = {v for k, v in doc.attrs if v and re.match(r"(https?:)?//", v)}
    assert urls <= {"http://www.w3.org/2000/svg"}
    assert "@import" not in page and "url(" not in page
    assert doc.tags.count("svg") >= 7  # tokens, cost, users, clients, cache, errors, tools


def test_report_numbers(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    page = render_report(conn, s.end - timedelta(days=30), s.end)
    text = " ".join(parse(page).text)
    assert f"{s.interceptions:,}" in text
    assert f"${s.cost_usd:,.2f}" in text
    assert f"{s.unpriced_rows:,} unpriced responses" in text
    error_rate = s.status_counts["failed"] / s.interceptions
    assert f"{error_rate * 100:.1f}%" in text
    prompt = s.input_tokens + s.cache_read_tokens + s.cache_write_tokens
    assert f"{s.cache_read_tokens / prompt * 100:.1f}%" in text
    for user in s.user_ids:
        assert user in text
        assert f"${s.cost_by_user[user]:,.2f}" in text
    for client in s.requests_by_client:
        assert client in text
    for model in s.requests_by_model:
        assert model in text
    assert f"{sum(s.tool_calls.values()):,}" in text
    # the unknown model is listed, and its cost shows as unknown rather than $0.00
    assert "Models without a known price" in text
    row = re.search(rf"<tr><td class=\"\">{UNKNOWN_MODEL}</td>.*?</tr>", page)
    assert row and "$0.00" not in row.group(0) and "–" in row.group(0)


def test_report_window(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    days = sorted(s.requests_by_day)[-3:]
    since = datetime.combine(days[0], time(0), UTC)
    page = render_report(conn, since, s.end)
    expected = sum(s.requests_by_day[d] for d in days)
    kpi = re.search(r'Requests</div><div class="kpi-value">([\d,]+)<', page)
    assert kpi and kpi.group(1) == f"{expected:,}"
    cost = sum(s.cost_by_day[d] for d in days)
    assert f"${cost:,.2f}" in page
    assert f"{since:%Y-%m-%d %H:%M} → {s.end:%Y-%m-%d %H:%M} UTC" in page


def test_empty_database() -> None:
    conn = duckdb.connect()
    for statement in DDL:
        conn.execute(statement)
    now = datetime(2025, 6, 15, tzinfo=UTC)
    page = render_report(conn, now - timedelta(days=30), now)
    parse(page)
    assert "No data in this period." in page
    assert "No tool calls in this period." in page
    assert 'class="kpi-value">0<' in page


def test_long_window_is_bucketed_by_week(seeded: tuple[duckdb.DuckDBPyConnection, SeedSummary]) -> None:
    conn, s = seeded
    page = render_report(conn, s.end - timedelta(days=400), s.end)
    parse(page)
    assert "per week" in page and ">wk " in page


def test_hostile_names_are_escaped() -> None:
    conn = duckdb.connect()
    s = seed(conn, days=2)
    evil = "<script>alert(1)</script>"
    uid = str(uuid.uuid4())
    conn.execute("INSERT INTO users VALUES (?, ?, ?)", [uid, evil, s.start])
    conn.execute(
        "INSERT INTO aibridge_interceptions (id, initiator_id, provider, provider_name, model, client, "
        "credential_kind, started_at, ended_at, status) VALUES (?, ?, 'openai', 'openai', ?, ?, "
        "'centralized', ?, ?, 'completed')",
        [str(uuid.uuid4()), uid, '"><svg onload=x>', evil, s.end - timedelta(hours=1), s.end],
    )
    page = render_report(conn, s.start, s.end)
    doc = parse(page)
    assert "script" not in doc.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not any(k.startswith("on") for k, _ in doc.attrs)
