"""py-spy sampling of a running process, folded into top functions (self and inclusive)."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench_lib.systems import PEER_VENV


def py_spy() -> str | None:
    local = PEER_VENV / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate), "-f", "raw",
                             "-o", str(out), "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"; the line makes every line its own entry.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})" if path else name


def fold(raw: Path, top: int = 25) -> dict[str, Any]:
    """Top functions by self and inclusive share of samples on the busiest thread (the event loop)."""
    per_thread: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    lines = raw.read_text(errors="replace").splitlines() if raw.exists() else []
    stacks: list[tuple[str, list[str], int]] = []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("process", "thread")) else "main"
        n = int(count)
        totals[thread] += n
        stacks.append((thread, frames, n))
    if not stacks:
        return {"samples": 0}
    busiest = totals.most_common(1)[0][0]
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    idle = 0
    for thread, frames, n in stacks:
        if thread != busiest:
            continue
        py = [_short(f) for f in frames if "(" in f]
        total += n
        if not py or (py[-1].startswith(("select (selectors", "_run_once (asyncio")) and len(py) <= 8):
            idle += n
        if py:
            self_c[py[-1]] += n
            for f in set(py):
                incl[f] += n
        per_thread.setdefault(thread, Counter())
    pct = 100 / total if total else 0.0
    return {
        "samples": total,
        "threads": {t: n for t, n in totals.most_common()},
        "thread": busiest,
        "idle_pct": round(idle * pct, 1),
        "self": [[f, round(n * pct, 1)] for f, n in self_c.most_common(top)],
        "inclusive": [[f, round(n * pct, 1)] for f, n in incl.most_common(top + 15)],
    }
