"""Self-contained HTML usage report (`aigw report`).

One file, no JavaScript, no network: inline CSS and SVG charts drawn here.
Hover tooltips come from SVG <title> elements. Every chart is followed by, or
summarised in, a table with the exact numbers.

Data comes from the daily rollup for closed days and from the base tables for
the rest of the window [since, now) (addons/store/rollup.py), with the same
per-interception rules as the `aibridge_interceptions_v` view, so the report
also works on a read-only database where the views were never created.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb

from addons.store.rollup import usage_window

__all__ = ["render_report"]

PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#86bcb6",
)  # fmt: skip
OTHER_COLOR = "#c3c9d2"
OK_COLOR = "#59a14f"
ERR_COLOR = "#e15759"
ACCENT = "#4e79a7"
CLIENT_COLOR = "#76b7b2"
MAX_SERIES = 8  # models beyond this are folded into "other"
MAX_BARS = 12  # rows in horizontal bar charts
WEEKLY_AFTER_DAYS = 120  # longer windows are bucketed by week so bars stay readable


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    since: datetime
    now: datetime
    totals: dict[str, Any]
    by_day_model: list[dict[str, Any]]
    by_day: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    by_user: list[dict[str, Any]]
    by_client: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    unpriced: list[dict[str, Any]]
    buckets: list[date] = field(default_factory=list)
    weekly: bool = False


def _query(conn: duckdb.DuckDBPyConnection, since: datetime, now: datetime) -> _Data:
    cur = conn.cursor()
    # The window's usage per (day, user, instance, model, client), its sessions and tool calls, from
    # the daily rollup plus the base tables for what is not rolled up (addons/store/rollup.py); the
    # temporary tables belong to this cursor's connection and go with it.
    usage_window(cur, since, now)

    def rows(select: str) -> list[dict[str, Any]]:
        c = cur.execute(select)
        names = [d[0] for d in c.description or ()]
        return [dict(zip(names, r, strict=True)) for r in c.fetchall()]

    sums = """COALESCE(sum(requests), 0)::BIGINT AS requests,
        COALESCE(sum(failed), 0)::BIGINT AS failed,
        COALESCE(sum(cancelled), 0)::BIGINT AS cancelled,
        COALESCE(sum(input_tokens), 0)::BIGINT AS input_tokens,
        COALESCE(sum(output_tokens), 0)::BIGINT AS output_tokens,
        COALESCE(sum(cache_read_tokens), 0)::BIGINT AS cache_read_tokens,
        COALESCE(sum(cache_write_tokens), 0)::BIGINT AS cache_write_tokens,
        COALESCE(sum(total_tokens), 0)::BIGINT AS total_tokens,
        sum(cost_usd) AS cost_usd,  -- NULL (shown as "–") when nothing in the group is priced
        COALESCE(sum(unpriced_responses), 0)::BIGINT AS unpriced_responses,
        COALESCE(sum(tool_calls), 0)::BIGINT AS tool_calls,
        COALESCE(sum(tool_errors), 0)::BIGINT AS tool_errors,
        count(DISTINCT initiator_id) AS users"""
    user_name = "COALESCE(u.name, x.initiator_id::VARCHAR)"
    totals = rows(f"SELECT {sums} FROM _usage")[0]
    totals["sessions"] = rows("SELECT count(DISTINCT session_id) AS n FROM _sessions")[0]["n"]
    sessions_by_user = {
        r["name"]: r["n"]
        for r in rows(
            f"SELECT {user_name} AS name, count(DISTINCT session_id) AS n "
            "FROM _sessions x LEFT JOIN users u ON u.id = x.initiator_id GROUP BY ALL"
        )
    }
    by_user = rows(
        f"SELECT {user_name} AS name, {sums} FROM _usage x LEFT JOIN users u ON u.id = x.initiator_id "
        "GROUP BY ALL ORDER BY cost_usd DESC NULLS LAST, total_tokens DESC, name"
    )
    for r in by_user:
        r["sessions"] = sessions_by_user.get(r["name"], 0)
    data = _Data(
        since=since,
        now=now,
        totals=totals,
        by_day_model=rows(
            "SELECT day, COALESCE(model, '(unknown)') AS model, sum(total_tokens)::BIGINT AS tokens, "
            "COALESCE(sum(cost_usd), 0) AS cost FROM _usage GROUP BY ALL"
        ),
        by_day=rows(f"SELECT day, {sums} FROM _usage GROUP BY day ORDER BY day"),
        by_model=rows(
            f"SELECT COALESCE(model, '(unknown)') AS model, "
            f"string_agg(DISTINCT provider_name, ', ' ORDER BY provider_name) AS instances, {sums} "
            "FROM _usage GROUP BY ALL ORDER BY total_tokens DESC, model"
        ),
        by_user=by_user,
        by_client=rows(f"SELECT client AS name, {sums} FROM _usage GROUP BY ALL ORDER BY requests DESC, name"),
        tools=rows(
            "SELECT tool, sum(calls)::BIGINT AS calls, sum(errors)::BIGINT AS errors, "
            "sum(mcp_calls)::BIGINT AS mcp_calls, count(DISTINCT client) AS clients "
            "FROM _tools GROUP BY tool ORDER BY calls DESC, tool"
        ),
        unpriced=rows(
            "SELECT provider, COALESCE(model, '(unknown)') AS model, sum(unpriced_requests)::BIGINT AS requests, "
            "sum(unpriced_tokens)::BIGINT AS tokens FROM _usage WHERE unpriced_requests > 0 "
            "GROUP BY ALL ORDER BY tokens DESC"
        ),
    )
    cur.close()
    return data


def _bucket_days(data: _Data) -> None:
    first = data.since.astimezone(UTC).date()
    last = (data.now - timedelta(microseconds=1)).astimezone(UTC).date()
    n = max((last - first).days + 1, 1)
    data.weekly = n > WEEKLY_AFTER_DAYS
    days = [first + timedelta(days=k) for k in range(n)]
    data.buckets = sorted({_bucket(d, data.weekly) for d in days})


def _bucket(d: date, weekly: bool) -> date:
    return d - timedelta(days=d.weekday()) if weekly else d


# --------------------------------------------------------------------------- formatting


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _int(n: float) -> str:
    return f"{round(n):,}"


def _compact(n: float) -> str:
    """1234 -> 1.2k, 5_600_000 -> 5.6M (chart labels)."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            text = f"{n / div:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2g}"


def _usd(x: float | None) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "$0.00"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def _usd_axis(x: float) -> str:
    if x == 0 or x >= 10:
        return f"${x:,.0f}"
    return f"${float(f'{x:.3g}'):g}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _day_label(d: date, weekly: bool) -> str:
    return ("wk " if weekly else "") + d.strftime("%b %d").replace(" 0", " ")


def _nice_axis(value: float, target_ticks: int = 5) -> tuple[float, int]:
    """(top, ticks): a round step (1/2/2.5/5 x 10^k) so that ticks * step just covers value."""
    if value <= 0:
        return 1.0, 4
    raw = value / target_ticks
    exp = math.floor(math.log10(raw))
    step = next(m * 10**exp for m in (1, 2, 2.5, 5, 10) if m * 10**exp >= raw * 0.999999)
    ticks = max(1, math.ceil(value / step - 1e-9))
    return step * ticks, ticks


# --------------------------------------------------------------------------- svg charts

# viewBox sizes: full-width charts and half-width ones (two per row). Drawing each
# at roughly its display width keeps 11-12px text legible without scaling.
_W, _W_HALF, _H = 1040, 520, 280
_ML, _MR, _MT, _MB = 64, 16, 14, 34


def _svg(body: str, label: str, width: int, height: int = _H) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{_esc(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="inherit">{body}</svg>'
    )


def _y_axis(top: float, fmt: Callable[[float], str], width: int, ticks: int) -> str:
    plot_h = _H - _MT - _MB
    out = []
    for k in range(ticks + 1):
        value = top * k / ticks
        y = _MT + plot_h - plot_h * k / ticks
        cls = "axis" if k == 0 else "grid"
        out.append(f'<line class="{cls}" x1="{_ML}" x2="{width - _MR}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{_ML - 8}" y="{y + 4:.1f}" text-anchor="end">{_esc(fmt(value))}</text>')
    return "".join(out)


def _x_labels(buckets: Sequence[date], weekly: bool, width: int) -> str:
    n = len(buckets)
    step = max(1, math.ceil(n / (width // 80)))
    slot = (width - _ML - _MR) / max(n, 1)
    out = []
    for k, d in enumerate(buckets):
        if k % step:
            continue
        x = _ML + slot * (k + 0.5)
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{_H - _MB + 18}" text-anchor="middle">'
            f"{_esc(_day_label(d, weekly))}</text>"
        )
    return "".join(out)


def _stacked_bars(
    buckets: Sequence[date],
    series: dict[str, list[float]],
    colors: dict[str, str],
    fmt: Callable[[float], str],
    label: str,
    weekly: bool,
) -> str:
    totals = [sum(vals[k] for vals in series.values()) for k in range(len(buckets))]
    top, ticks = _nice_axis(max(totals, default=0))
    plot_h = _H - _MT - _MB
    slot = (_W - _ML - _MR) / max(len(buckets), 1)
    bar_w = max(min(slot * 0.72, 42), 1.5)
    parts = [_y_axis(top, fmt, _W, ticks)]
    for k, d in enumerate(buckets):
        x = _ML + slot * k + (slot - bar_w) / 2
        y = _MT + plot_h
        for name, vals in series.items():
            v = vals[k]
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            tip = f"{_day_label(d, weekly)} · {name}: {fmt(v)}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.5):.1f}" '
                f'fill="{colors[name]}"><title>{_esc(tip)}</title></rect>'
            )
    parts.append(_x_labels(buckets, weekly, _W))
    return _svg("".join(parts), label, _W)


def _line_chart(
    buckets: Sequence[date],
    values: Sequence[float | None],
    fmt: Callable[[float], str],
    label: str,
    weekly: bool,
    color: str = ACCENT,
    top: float | None = None,
) -> str:
    present = [v for v in values if v is not None]
    top, ticks = (top, 4) if top is not None else _nice_axis(max(present, default=0), 4)
    plot_h = _H - _MT - _MB
    slot = (_W_HALF - _ML - _MR) / max(len(buckets), 1)
    segments: list[list[str]] = [[]]
    dots: list[str] = []
    for k, v in enumerate(values):
        if v is None:  # no requests in this bucket: break the line rather than draw a fake zero
            segments.append([])
            continue
        x = _ML + slot * (k + 0.5)
        y = _MT + plot_h - plot_h * min(v / top, 1)
        segments[-1].append(f"{x:.1f},{y:.1f}")
        tip = f"{_day_label(buckets[k], weekly)}: {fmt(v)}"
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{color}"><title>{_esc(tip)}</title></circle>')
    lines = [
        f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2.2" '
        'stroke-linejoin="round" stroke-linecap="round"/>'
        for seg in segments
        if len(seg) > 1
    ]
    parts = [_y_axis(top, fmt, _W_HALF, ticks), *lines, *dots]
    parts.append(_x_labels(buckets, weekly, _W_HALF))
    return _svg("".join(parts), label, _W_HALF)


def _hbars(
    items: Sequence[tuple[str, float, float, str]],
    fmt_label: Callable[[int], str],
    label: str,
    width: int = _W_HALF,
) -> str:
    """Horizontal bars: (name, value, error_part, color); error_part is drawn red at the bar's end."""
    row_h, label_w, value_w = 30, 140, 170
    height = _MT + row_h * len(items) + 6
    top = max((v for _, v, _, _ in items), default=0) or 1
    bar_span = width - label_w - value_w - 10
    parts = []
    for k, (name, value, err, color) in enumerate(items):
        y = _MT + row_h * k
        w = bar_span * value / top
        ew = bar_span * err / top
        short = name if len(name) <= 20 else name[:19] + "…"
        parts.append(
            f'<text class="lbl" x="{label_w - 10}" y="{y + 19}" text-anchor="end">'
            f"<title>{_esc(name)}</title>{_esc(short)}</text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 6}" width="{max(w - ew, 0):.1f}" height="18" rx="3" fill="{color}">'
            f"<title>{_esc(name)}: {_esc(fmt_label(k))}</title></rect>"
        )
        if ew > 0:
            parts.append(
                f'<rect x="{label_w + w - ew:.1f}" y="{y + 6}" width="{ew:.1f}" height="18" rx="3" '
                f'fill="{ERR_COLOR}"><title>{_esc(name)}: errors</title></rect>'
            )
        parts.append(f'<text class="val" x="{label_w + w + 8:.1f}" y="{y + 19}">{_esc(fmt_label(k))}</text>')
    return _svg("".join(parts), label, width, height)


def _legend(colors: dict[str, str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{c}"></i>{_esc(name)}</span>' for name, c in colors.items()
    )
    return f'<div class="legend">{items}</div>'


# --------------------------------------------------------------------------- sections


def _model_series(data: _Data, metric: str) -> tuple[dict[str, list[float]], dict[str, str]]:
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
        k = index.get(_bucket(row["day"], data.weekly))
        if k is not None:
            series[name][k] += float(row[metric] or 0)
    return series, colors


def _per_bucket(data: _Data) -> list[dict[str, float]]:
    acc: list[dict[str, float]] = [defaultdict(float) for _ in data.buckets]
    index = {d: k for k, d in enumerate(data.buckets)}
    for row in data.by_day:
        k = index.get(_bucket(row["day"], data.weekly))
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
        ("Requests", _int(t["requests"]), f"{t['sessions']:,} sessions", False),
        ("Users", _int(t["users"]), "active in period", False),
        ("Tokens", _compact(t["total_tokens"]), f"{_compact(t['output_tokens'])} output", False),
        (
            "Cost",
            _usd(t["cost_usd"]),
            f"+ {unpriced:,} unpriced responses"
            if unpriced
            else ("all responses priced" if t["cost_usd"] is not None else "nothing priced yet"),
            bool(unpriced),
        ),
        ("Cache hit ratio", _pct(_ratio(t["cache_read_tokens"], prompt_tokens)), "of prompt tokens", False),
        (
            "Error rate",
            _pct(_ratio(t["failed"], t["requests"])),
            f"{t['failed']:,} failed · {t['cancelled']:,} cancelled",
            False,
        ),
        (
            "Tool calls",
            _int(t["tool_calls"]),
            f"{_pct(_ratio(t['tool_errors'], t['tool_calls']))} errored" if t["tool_calls"] else "none",
            False,
        ),
    ]
    body = "".join(
        f'<div class="kpi"><div class="kpi-label">{_esc(label)}</div><div class="kpi-value">{_esc(value)}</div>'
        f'<div class="kpi-note{" warn" if warn else ""}">{_esc(note)}</div></div>'
        for label, value, note, warn in cards
    )
    return f'<section class="kpis">{body}</section>'


def _card(title: str, subtitle: str, content: str, extra_class: str = "") -> str:
    return (
        f'<section class="card {extra_class}"><h2>{_esc(title)}</h2>'
        f'<p class="subtitle">{_esc(subtitle)}</p>{content}</section>'
    )


_EMPTY = '<p class="empty">No data in this period.</p>'


def _usage_charts(data: _Data) -> str:
    unit = "week" if data.weekly else "day"
    if not data.totals["requests"]:
        return _card("Tokens by model", f"per {unit}", _EMPTY) + _card("Cost by model", f"per {unit}", _EMPTY)
    tok_series, colors = _model_series(data, "tokens")
    cost_series, _ = _model_series(data, "cost")
    tokens = _stacked_bars(data.buckets, tok_series, colors, _compact, "Tokens per day by model", data.weekly)
    cost = _stacked_bars(data.buckets, cost_series, colors, _usd_axis, "Cost per day by model", data.weekly)
    legend = _legend(colors)
    return _card(
        "Tokens by model",
        f"all token kinds (input, output, cache read, cache write) per {unit}, UTC",
        tokens + legend,
    ) + _card("Cost by model", f"USD per {unit}, priced rows only", cost + legend)


def _top_charts(data: _Data) -> str:
    users = data.by_user[:MAX_BARS]
    clients = data.by_client[:MAX_BARS]
    if not users:
        return '<div class="grid2">' + _card("Top users", "", _EMPTY) + _card("Top clients", "", _EMPTY) + "</div>"
    by_cost = any(u["cost_usd"] for u in users)
    metric = "cost_usd" if by_cost else "total_tokens"
    user_items = [(u["name"], float(u[metric] or 0), 0.0, ACCENT) for u in users]
    user_svg = _hbars(
        user_items,
        lambda k: f"{_usd(users[k]['cost_usd'])} · {_compact(users[k]['total_tokens'])} tok",
        "Top users",
    )
    client_items = [(c["name"], float(c["requests"]), 0.0, CLIENT_COLOR) for c in clients]
    client_svg = _hbars(
        client_items,
        lambda k: f"{clients[k]['requests']:,} req · {_usd(clients[k]['cost_usd'])}",
        "Top clients",
    )
    return (
        '<div class="grid2">'
        + _card("Top users", "by cost" if by_cost else "by tokens", user_svg)
        + _card("Top clients", "by requests", client_svg)
        + "</div>"
    )


def _rate_charts(data: _Data) -> str:
    unit = "week" if data.weekly else "day"
    if not data.totals["requests"]:
        return '<div class="grid2">' + _card("Cache hit ratio", "", _EMPTY) + _card("Error rate", "", _EMPTY) + "</div>"
    acc = _per_bucket(data)
    cache = [
        _ratio(a["cache_read_tokens"], a["input_tokens"] + a["cache_read_tokens"] + a["cache_write_tokens"])
        for a in acc
    ]
    errors = [_ratio(a["failed"], a["requests"]) for a in acc]
    fmt = lambda v: f"{v * 100:.0f}%"  # noqa: E731
    cache_svg = _line_chart(data.buckets, cache, fmt, "Cache hit ratio", data.weekly, OK_COLOR, top=1.0)
    err_svg = _line_chart(data.buckets, errors, fmt, "Error rate", data.weekly, ERR_COLOR)
    return (
        '<div class="grid2">'
        + _card("Cache hit ratio", f"cache-read share of prompt tokens per {unit}", cache_svg)
        + _card("Error rate", f"share of requests that failed, per {unit} (cancellations excluded)", err_svg)
        + "</div>"
    )


def _tool_chart(data: _Data) -> str:
    tools = data.tools[:MAX_BARS]
    if not tools:
        return _card("Tool-call mix", "", '<p class="empty">No tool calls in this period.</p>')
    items = [(t["tool"], float(t["calls"]), float(t["errors"]), OK_COLOR) for t in tools]
    svg = _hbars(
        items,
        lambda k: f"{tools[k]['calls']:,} calls · {_pct(_ratio(tools[k]['errors'], tools[k]['calls']), 0)} err",
        "Tool-call mix",
        _W,
    )
    legend = _legend({"succeeded": OK_COLOR, "invocation error": ERR_COLOR})
    more = len(data.tools) - len(tools)
    note = f"top {len(tools)} of {len(data.tools)} tools" if more > 0 else "all tools"
    return _card("Tool-call mix", f"calls per tool, {note}", svg + legend)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Col:
    title: str
    get: Callable[[dict[str, Any]], Any]
    numeric: bool = True


def _table(title: str, rows: Sequence[dict[str, Any]], cols: Sequence[_Col]) -> str:
    if not rows:
        return _card(title, "", _EMPTY, "table-card")
    head = "".join(f'<th class="{"num" if c.numeric else ""}">{_esc(c.title)}</th>' for c in cols)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if c.numeric else ""}">{_esc(c.get(r))}</td>' for c in cols) + "</tr>"
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
        _Col("Requests", lambda r: _int(r["requests"])),
        _Col("Failed", lambda r: _int(r["failed"])),
        _Col("Input", lambda r: _int(r["input_tokens"])),
        _Col("Output", lambda r: _int(r["output_tokens"])),
        _Col("Cache read", lambda r: _int(r["cache_read_tokens"])),
        _Col("Cache write", lambda r: _int(r["cache_write_tokens"])),
        _Col("Cache hit", lambda r: _pct(_cache_ratio(r))),
        _Col("Cost (USD)", lambda r: _usd(r["cost_usd"])),
    ]


def _cache_ratio(r: dict[str, Any]) -> float | None:
    return _ratio(r["cache_read_tokens"], r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"])


def _tables(data: _Data) -> str:
    model_cols = _usage_cols("Model", "model")
    model_cols.insert(1, _Col("Instances", lambda r: r["instances"], numeric=False))
    model_cols.append(_Col("Unpriced", lambda r: _int(r["unpriced_responses"])))
    day_cols = _usage_cols("Day (UTC)", "day")
    day_cols.insert(3, _Col("Cancelled", lambda r: _int(r["cancelled"])))
    user_cols = _usage_cols("User", "name")
    user_cols.insert(2, _Col("Sessions", lambda r: _int(r["sessions"])))
    client_cols = _usage_cols("Client", "name")
    client_cols.insert(2, _Col("Users", lambda r: _int(r["users"])))
    tool_cols = [
        _Col("Tool", lambda r: r["tool"], numeric=False),
        _Col("Calls", lambda r: _int(r["calls"])),
        _Col("Errors", lambda r: _int(r["errors"])),
        _Col("Error rate", lambda r: _pct(_ratio(r["errors"], r["calls"]))),
        _Col("MCP calls", lambda r: _int(r["mcp_calls"])),
        _Col("Clients", lambda r: _int(r["clients"])),
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
                    _Col("Requests", lambda r: _int(r["requests"])),
                    _Col("Tokens", lambda r: _int(r["tokens"])),
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
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return _render(_query(conn, since, now))


def _render(data: _Data) -> str:
    since, now = data.since, data.now
    _bucket_days(data)
    period = f"{since:%Y-%m-%d %H:%M} → {now:%Y-%m-%d %H:%M} UTC"
    body = "".join(
        [
            f"<header><h1>AI usage report</h1><p class='period'>{_esc(period)}</p></header>",
            _kpis(data.totals),
            _usage_charts(data),
            _top_charts(data),
            _rate_charts(data),
            _tool_chart(data),
            _tables(data),
            f"<footer>Generated by aigw at {_esc(f'{now:%Y-%m-%d %H:%M} UTC')}. Costs are list prices from "
            "genai-prices plus local overrides; unpriced models are excluded from cost totals. "
            "Days are UTC.</footer>",
        ]
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>aigw usage report · {_esc(period)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
