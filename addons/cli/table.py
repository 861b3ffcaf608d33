"""Plain-text tables as the CLI prints them, in one layout: each column as wide as its widest cell, two
spaces apart, no trailing spaces.

Two kinds of rows go through it: SQL-shaped results (`aigw query`, `keys list`, `users list`, …) with
their values as they are, and the audit listings (`interceptions list`, `sessions list`) whose cells are
formatted for reading by column (times, durations, costs, token counts, first prompt line).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def layout(headers: Sequence[str], cells: Sequence[Sequence[str]], *, right: Sequence[bool] = (),
           rule: bool = False) -> list[str]:
    """The table's lines: a header line, a line of dashes under it with `rule`, then one line per row;
    the columns flagged in `right` are right-aligned."""
    widths = [max([len(h), *(len(r[n]) for r in cells)]) for n, h in enumerate(headers)]
    align = right or [False] * len(headers)

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, align, strict=True)]
        return "  ".join(parts).rstrip()

    lines = [line(headers)]
    if rule:
        lines.append(line(["-" * w for w in widths]))
    lines.extend(line(r) for r in cells)
    return lines


# -- SQL-shaped rows ---------------------------------------------------------------


def render_table(columns: list[str], rows: list[list[Any]]) -> str:
    """Rows as they are (None empty, other non-text as JSON, one line of at most 80 characters), with a
    rule under the header and the row count after them."""
    lines = layout(columns, [[_value(v) for v in row] for row in rows], rule=True)
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= 80 else text[:79] + "…"


# -- audit rows ------------------------------------------------------------------

# (row key, header). The CLI passes these, or its own subset, to format_table.
INTERCEPTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("started_at", "TIME (UTC)"),
    ("id", "ID"),
    ("user", "USER"),
    ("client", "CLIENT"),
    ("provider_name", "INSTANCE"),
    ("model", "MODEL"),
    ("status", "STATUS"),
    ("duration_ms", "DURATION"),
    ("input_tokens", "IN"),
    ("output_tokens", "OUT"),
    ("cache_read_tokens", "CACHE R"),
    ("cache_write_tokens", "CACHE W"),
    ("cost_usd", "COST"),
    ("prompt", "PROMPT"),
)

SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ended_at", "LAST ACTIVE (UTC)"),
    ("session_id", "SESSION"),
    ("user", "USER"),
    ("client", "CLIENT"),
    ("duration_ms", "SPAN"),
    ("interceptions", "REQS"),
    ("total_tokens", "TOKENS"),
    ("cost_usd", "COST"),
    ("tools", "TOOLS"),
    ("first_prompt", "FIRST PROMPT"),
)

_PROMPT_WIDTH = 48
_TEXT_WIDTH = 40


def format_table(rows: list[dict[str, Any]], columns: Sequence[str | tuple[str, str]]) -> str:
    """Audit rows (dicts) as a table. Columns are keys or (key, header).

    Timestamps print as "YYYY-MM-DD HH:MM:SS", durations as 850ms/12.3s/4m05s,
    costs as $0.0123 ("-" when unknown), token counts with thousands separators,
    prompts as their first non-empty line, truncated with "…"; numeric columns are right-aligned.
    """
    cols = [(c, c.upper()) if isinstance(c, str) else c for c in columns]
    cells = [[_cell(key, row.get(key)) for key, _ in cols] for row in rows]
    right = [_is_numeric([row.get(key) for row in rows]) for key, _ in cols]
    lines = layout([h for _, h in cols], cells, right=right)
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("prompt", "first_prompt"):
        return _first_line(str(value), _PROMPT_WIDTH)
    if key.endswith("_at") and isinstance(value, str):
        return value[:19].replace("T", " ")
    if key == "duration_ms" and isinstance(value, int | float):
        return _duration(int(value))
    if key.startswith("cost") and isinstance(value, int | float):
        return f"${value:,.4f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, list):
        return _first_line(",".join(map(str, value)), _TEXT_WIDTH)
    if key == "id" or key.endswith("_id"):
        return str(value)  # ids are copied into `show`; never truncate them
    return _first_line(str(value), _TEXT_WIDTH)


def _first_line(text: str, width: int) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    more = line != " ".join(text.split())  # there was more than this one line
    if len(line) > width:
        return line[: width - 1] + "…"
    return line + ("…" if more and len(line) < width else "")


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _is_numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
