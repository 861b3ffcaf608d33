"""Self-contained HTML usage report (`aigw report`).

One file, no JavaScript, no network: inline CSS and the SVG charts of charts.py,
over the numbers of report_data.py. Every chart is followed by, or summarised in,
a table with the exact numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from addons.reports.charts import (
    ACCENT,
    CLIENT_COLOR,
    ERR_COLOR,
    FULL_WIDTH,
    OK_COLOR,
    OTHER_COLOR,
    PALETTE,
    compact,
    esc,
    fmt_int,
    hbars,
    legend,
    line_chart,
    pct,
    ratio,
    stacked_bars,
    usd,
    usd_axis,
)
from addons.reports.filters import utc
from addons.reports.report_data import ReportData, bucket, bucket_days, load

__all__ = ["render_report"]

MAX_SERIES = 8  # models beyond this are folded into "other"
MAX_BARS = 12  # rows in horizontal bar charts


# --------------------------------------------------------------------------- sections


def _model_series(data: ReportData, metric: str) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-model values per bucket; models past MAX_SERIES (by tokens) fold into "other"."""
    ranked = [m["model"] for m in data.by_model]
    keep = ranked[:MAX_SERIES] if len(ranked) <= MAX_SERIES + 1 else ranked[: MAX_SERIES - 1]
    colors = {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(keep)}
    if len(keep) < len(ranked):
        colors["other"] = OTHER_COLOR
    index = {d: k for k, d in enumerate(data.buckets)}
    series = {name: [0.0] * len(data.buckets) for name in colors}
    for row in data.by_day_model:
        name = row["model"] if row["model"] in keep else "other"
        k = index.get(bucket(row["day"], data.weekly))
        if k is not None:
            series[name][k] += float(row[metric] or 0)
    return series, colors


def _per_bucket(data: ReportData) -> list[dict[str, float]]:
    acc: list[dict[str, float]] = [defaultdict(float) for _ in data.buckets]
    index = {d: k for k, d in enumerate(data.buckets)}
    for row in data.by_day:
        k = index.get(bucket(row["day"], data.weekly))
        if k is None:
            continue
        for key, value in row.items():
            if key != "day" and isinstance(value, int | float):
                acc[k][key] += value
    return acc


def _kpis(t: dict[str, Any]) -> str:
    prompt_tokens = t["input_tokens"] + t["cache_read_tokens"] + t["cache_write_tokens"]
    unpriced = t["unpriced_responses"]
    cards = [  # (label, value, note, note is a warning)
        ("Requests", fmt_int(t["requests"]), f"{t['sessions']:,} sessions", False),
        ("Users", fmt_int(t["users"]), "active in period", False),
        ("Tokens", compact(t["total_tokens"]), f"{compact(t['output_tokens'])} output", False),
        (
            "Cost",
            usd(t["cost_usd"]),
            f"+ {unpriced:,} unpriced responses"
            if unpriced
            else ("all responses priced" if t["cost_usd"] is not None else "nothing priced yet"),
            bool(unpriced),
        ),
        ("Cache hit ratio", pct(ratio(t["cache_read_tokens"], prompt_tokens)), "of prompt tokens", False),
        (
            "Error rate",
            pct(ratio(t["failed"], t["requests"])),
            f"{t['failed']:,} failed · {t['cancelled']:,} cancelled",
            False,
        ),
        (
            "Tool calls",
            fmt_int(t["tool_calls"]),
            f"{pct(ratio(t['tool_errors'], t['tool_calls']))} errored" if t["tool_calls"] else "none",
            False,
        ),
    ]
    body = "".join(
        f'<div class="kpi"><div class="kpi-label">{esc(label)}</div><div class="kpi-value">{esc(value)}</div>'
        f'<div class="kpi-note{" warn" if warn else ""}">{esc(note)}</div></div>'
        for label, value, note, warn in cards
    )
    return f'<section class="kpis">{body}</section>'


def _card(title: str, subtitle: str, content: str, extra_class: str = "") -> str:
    return (
        f'<section class="card {extra_class}"><h2>{esc(title)}</h2>'
        f'<p class="subtitle">{esc(subtitle)}</p>{content}</section>'
    )


_EMPTY = '<p class="empty">No data in this period.</p>'


def _usage_charts(data: ReportData) -> str:
    unit = "week" if data.weekly else "day"
    if not data.totals["requests"]:
        return _card("Tokens by model", f"per {unit}", _EMPTY) + _card("Cost by model", f"per {unit}", _EMPTY)
    tok_series, colors = _model_series(data, "tokens")
    cost_series, _ = _model_series(data, "cost")
    tokens = stacked_bars(data.buckets, tok_series, colors, compact, "Tokens per day by model", data.weekly)
    cost = stacked_bars(data.buckets, cost_series, colors, usd_axis, "Cost per day by model", data.weekly)
    key = legend(colors)
    return _card(
        "Tokens by model",
        f"all token kinds (input, output, cache read, cache write) per {unit}, UTC",
        tokens + key,
    ) + _card("Cost by model", f"USD per {unit}, priced rows only", cost + key)


def _top_charts(data: ReportData) -> str:
    users = data.by_user[:MAX_BARS]
    clients = data.by_client[:MAX_BARS]
    if not users:
        return '<div class="grid2">' + _card("Top users", "", _EMPTY) + _card("Top clients", "", _EMPTY) + "</div>"
    by_cost = any(u["cost_usd"] for u in users)
    metric = "cost_usd" if by_cost else "total_tokens"
    user_items = [(u["name"], float(u[metric] or 0), 0.0, ACCENT) for u in users]
    user_svg = hbars(
        user_items,
        lambda k: f"{usd(users[k]['cost_usd'])} · {compact(users[k]['total_tokens'])} tok",
        "Top users",
    )
    client_items = [(c["name"], float(c["requests"]), 0.0, CLIENT_COLOR) for c in clients]
    client_svg = hbars(
        client_items,
        lambda k: f"{clients[k]['requests']:,} req · {usd(clients[k]['cost_usd'])}",
        "Top clients",
    )
    return (
        '<div class="grid2">'
        + _card("Top users", "by cost" if by_cost else "by tokens", user_svg)
        + _card("Top clients", "by requests", client_svg)
        + "</div>"
    )


def _rate_charts(data: ReportData) -> str:
    unit = "week" if data.weekly else "day"
    if not data.totals["requests"]:
        return '<div class="grid2">' + _card("Cache hit ratio", "", _EMPTY) + _card("Error rate", "", _EMPTY) + "</div>"
    acc = _per_bucket(data)
    cache = [
        ratio(a["cache_read_tokens"], a["input_tokens"] + a["cache_read_tokens"] + a["cache_write_tokens"])
        for a in acc
    ]
    errors = [ratio(a["failed"], a["requests"]) for a in acc]
    fmt = lambda v: f"{v * 100:.0f}%"  # noqa: E731
    cache_svg = line_chart(data.buckets, cache, fmt, "Cache hit ratio", data.weekly, OK_COLOR, top=1.0)
    err_svg = line_chart(data.buckets, errors, fmt, "Error rate", data.weekly, ERR_COLOR)
    return (
        '<div class="grid2">'
        + _card("Cache hit ratio", f"cache-read share of prompt tokens per {unit}", cache_svg)
        + _card("Error rate", f"share of requests that failed, per {unit} (cancellations excluded)", err_svg)
        + "</div>"
    )


def _tool_chart(data: ReportData) -> str:
    tools = data.tools[:MAX_BARS]
    if not tools:
        return _card("Tool-call mix", "", '<p class="empty">No tool calls in this period.</p>')
    items = [(t["tool"], float(t["calls"]), float(t["errors"]), OK_COLOR) for t in tools]
    svg = hbars(
        items,
        lambda k: f"{tools[k]['calls']:,} calls · {pct(ratio(tools[k]['errors'], tools[k]['calls']), 0)} err",
        "Tool-call mix",
        FULL_WIDTH,
    )
    key = legend({"succeeded": OK_COLOR, "invocation error": ERR_COLOR})
    more = len(data.tools) - len(tools)
    note = f"top {len(tools)} of {len(data.tools)} tools" if more > 0 else "all tools"
    return _card("Tool-call mix", f"calls per tool, {note}", svg + key)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Col:
    title: str
    get: Callable[[dict[str, Any]], Any]
    numeric: bool = True


def _table(title: str, rows: Sequence[dict[str, Any]], cols: Sequence[_Col]) -> str:
    if not rows:
        return _card(title, "", _EMPTY, "table-card")
    head = "".join(f'<th class="{"num" if c.numeric else ""}">{esc(c.title)}</th>' for c in cols)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if c.numeric else ""}">{esc(c.get(r))}</td>' for c in cols) + "</tr>"
        for r in rows
    )
    return _card(
        title,
        f"{len(rows):,} rows",
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>',
        "table-card",
    )


def _usage_cols(first: str, key: str) -> list[_Col]:
    return [
        _Col(first, lambda r: r[key], numeric=False),
        _Col("Requests", lambda r: fmt_int(r["requests"])),
        _Col("Failed", lambda r: fmt_int(r["failed"])),
        _Col("Input", lambda r: fmt_int(r["input_tokens"])),
        _Col("Output", lambda r: fmt_int(r["output_tokens"])),
        _Col("Cache read", lambda r: fmt_int(r["cache_read_tokens"])),
        _Col("Cache write", lambda r: fmt_int(r["cache_write_tokens"])),
        _Col("Cache hit", lambda r: pct(_cache_ratio(r))),
        _Col("Cost (USD)", lambda r: usd(r["cost_usd"])),
    ]


def _cache_ratio(r: dict[str, Any]) -> float | None:
    return ratio(r["cache_read_tokens"], r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"])


def _tables(data: ReportData) -> str:
    model_cols = _usage_cols("Model", "model")
    model_cols.insert(1, _Col("Instances", lambda r: r["instances"], numeric=False))
    model_cols.append(_Col("Unpriced", lambda r: fmt_int(r["unpriced_responses"])))
    day_cols = _usage_cols("Day (UTC)", "day")
    day_cols.insert(3, _Col("Cancelled", lambda r: fmt_int(r["cancelled"])))
    user_cols = _usage_cols("User", "name")
    user_cols.insert(2, _Col("Sessions", lambda r: fmt_int(r["sessions"])))
    client_cols = _usage_cols("Client", "name")
    client_cols.insert(2, _Col("Users", lambda r: fmt_int(r["users"])))
    tool_cols = [
        _Col("Tool", lambda r: r["tool"], numeric=False),
        _Col("Calls", lambda r: fmt_int(r["calls"])),
        _Col("Errors", lambda r: fmt_int(r["errors"])),
        _Col("Error rate", lambda r: pct(ratio(r["errors"], r["calls"]))),
        _Col("MCP calls", lambda r: fmt_int(r["mcp_calls"])),
        _Col("Clients", lambda r: fmt_int(r["clients"])),
    ]
    parts = [
        '<h2 class="section">The numbers</h2>',
        _table("By model", data.by_model, model_cols),
        _table("By user", data.by_user, user_cols),
        _table("By client", data.by_client, client_cols),
        _table("By day", list(reversed(data.by_day)), day_cols),
        _table("Tools", data.tools, tool_cols),
    ]
    if data.unpriced:
        parts.append(
            _table(
                "Models without a known price",
                data.unpriced,
                [
                    _Col("Provider", lambda r: r["provider"], numeric=False),
                    _Col("Model", lambda r: r["model"], numeric=False),
                    _Col("Requests", lambda r: fmt_int(r["requests"])),
                    _Col("Tokens", lambda r: fmt_int(r["tokens"])),
                ],
            )
        )
    return "".join(parts)


# --------------------------------------------------------------------------- page

_CSS = """
:root{--fg:#1f2630;--muted:#5d6776;--line:#e3e7ee;--bg:#f5f7fa;--card:#fff;--accent:#4e79a7}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:32px 24px 48px}
header h1{margin:0 0 4px;font-size:26px;letter-spacing:-.01em}
header .period{color:var(--muted);margin:0 0 24px}
h2{font-size:16px;margin:0}
h2.section{font-size:19px;margin:36px 0 12px}
.subtitle{margin:2px 0 14px;color:var(--muted);font-size:12.5px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;margin-bottom:16px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.kpi-label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.kpi-value{font-size:24px;font-weight:650;margin:4px 0 2px;font-variant-numeric:tabular-nums}
.kpi-note{color:var(--muted);font-size:12px}
.kpi-note.warn{color:#b3261e}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin-bottom:16px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.grid2 .card{margin-bottom:0}.grid2{margin-bottom:16px}
@media (max-width:860px){.grid2{grid-template-columns:1fr}}
svg{display:block;overflow:visible}
svg .grid{stroke:#edf0f4;stroke-width:1}
svg .axis{stroke:#c5ccd6;stroke-width:1}
svg .tick{fill:#6b7482;font-size:11px}
svg .lbl{fill:var(--fg);font-size:12.5px}
svg .val{fill:var(--muted);font-size:12px;font-variant-numeric:tabular-nums}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin-top:10px;font-size:12.5px;color:var(--muted)}
.key{display:inline-flex;align-items:center;gap:6px}
.key i{display:inline-block;width:11px;height:11px;border-radius:2px}
.empty{color:var(--muted);font-style:italic;margin:24px 0}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{color:var(--muted);font-weight:600;font-size:12px;background:#fafbfc}
td.num,th.num{text-align:right}
tbody tr:hover{background:#f8fafc}
footer{color:var(--muted);font-size:12px;margin-top:32px}
"""


def render_report(conn: duckdb.DuckDBPyConnection, since: datetime, now: datetime) -> str:
    """The whole report for started_at in [since, now) as one self-contained HTML document."""
    return _render(load(conn, utc(since), utc(now)))


def _render(data: ReportData) -> str:
    since, now = data.since, data.now
    bucket_days(data)
    period = f"{since:%Y-%m-%d %H:%M} → {now:%Y-%m-%d %H:%M} UTC"
    body = "".join(
        [
            f"<header><h1>AI usage report</h1><p class='period'>{esc(period)}</p></header>",
            _kpis(data.totals),
            _usage_charts(data),
            _top_charts(data),
            _rate_charts(data),
            _tool_chart(data),
            _tables(data),
            f"<footer>Generated by aigw at {esc(f'{now:%Y-%m-%d %H:%M} UTC')}. Costs are list prices from "
            "genai-prices plus local overrides; unpriced models are excluded from cost totals. "
            "Days are UTC.</footer>",
        ]
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>aigw usage report · {esc(period)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
