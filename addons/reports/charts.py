"""The usage report's numbers as text and its charts as inline SVG (no JavaScript, no network).

Hover tooltips come from SVG <title> elements; the report (html.py) follows every chart with, or
summarises it in, a table of the exact numbers, formatted by the same functions.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#86bcb6",
)  # fmt: skip
OTHER_COLOR = "#c3c9d2"
OK_COLOR = "#59a14f"
ERR_COLOR = "#e15759"
ACCENT = "#4e79a7"
CLIENT_COLOR = "#76b7b2"


# --------------------------------------------------------------------------- numbers as text


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_int(n: float) -> str:
    return f"{round(n):,}"


def compact(n: float) -> str:
    """1234 -> 1.2k, 5_600_000 -> 5.6M (chart labels)."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            text = f"{n / div:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2g}"


def usd(x: float | None) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "$0.00"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def usd_axis(x: float) -> str:
    if x == 0 or x >= 10:
        return f"${x:,.0f}"
    return f"${float(f'{x:.3g}'):g}"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def day_label(d: date, weekly: bool) -> str:
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
FULL_WIDTH, _W_HALF, _H = 1040, 520, 280
_ML, _MR, _MT, _MB = 64, 16, 14, 34


def _svg(body: str, label: str, width: int, height: int = _H) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{esc(label)}" '
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
        out.append(f'<text class="tick" x="{_ML - 8}" y="{y + 4:.1f}" text-anchor="end">{esc(fmt(value))}</text>')
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
            f"{esc(day_label(d, weekly))}</text>"
        )
    return "".join(out)


def stacked_bars(
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
    slot = (FULL_WIDTH - _ML - _MR) / max(len(buckets), 1)
    bar_w = max(min(slot * 0.72, 42), 1.5)
    parts = [_y_axis(top, fmt, FULL_WIDTH, ticks)]
    for k, d in enumerate(buckets):
        x = _ML + slot * k + (slot - bar_w) / 2
        y = _MT + plot_h
        for name, vals in series.items():
            v = vals[k]
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            tip = f"{day_label(d, weekly)} · {name}: {fmt(v)}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.5):.1f}" '
                f'fill="{colors[name]}"><title>{esc(tip)}</title></rect>'
            )
    parts.append(_x_labels(buckets, weekly, FULL_WIDTH))
    return _svg("".join(parts), label, FULL_WIDTH)


def line_chart(
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
        tip = f"{day_label(buckets[k], weekly)}: {fmt(v)}"
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{color}"><title>{esc(tip)}</title></circle>')
    lines = [
        f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2.2" '
        'stroke-linejoin="round" stroke-linecap="round"/>'
        for seg in segments
        if len(seg) > 1
    ]
    parts = [_y_axis(top, fmt, _W_HALF, ticks), *lines, *dots]
    parts.append(_x_labels(buckets, weekly, _W_HALF))
    return _svg("".join(parts), label, _W_HALF)


def hbars(
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
            f"<title>{esc(name)}</title>{esc(short)}</text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 6}" width="{max(w - ew, 0):.1f}" height="18" rx="3" fill="{color}">'
            f"<title>{esc(name)}: {esc(fmt_label(k))}</title></rect>"
        )
        if ew > 0:
            parts.append(
                f'<rect x="{label_w + w - ew:.1f}" y="{y + 6}" width="{ew:.1f}" height="18" rx="3" '
                f'fill="{ERR_COLOR}"><title>{esc(name)}: errors</title></rect>'
            )
        parts.append(f'<text class="val" x="{label_w + w + 8:.1f}" y="{y + 19}">{esc(fmt_label(k))}</text>')
    return _svg("".join(parts), label, width, height)


def legend(colors: dict[str, str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{c}"></i>{esc(name)}</span>' for name, c in colors.items()
    )
    return f'<div class="legend">{items}</div>'
