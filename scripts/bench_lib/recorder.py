"""Scenario 5's parts: the DuckDB writer on its own, and what the probe saw during scenario 1."""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench_lib.common import percentiles, rounded


def standalone(requests: int) -> dict[str, Any]:
    """Feed RecordWriter the records the gateway makes for one benchmark request, as fast as it takes them.

    Per request: InterceptionStart, PromptRecord, TokenUsageRecord, InterceptionEnd (3 rows:
    the interception, its token usage and its prompt), plus a ToolUsageRecord every other request.
    """
    from addons.flow.records import InterceptionEnd, InterceptionStart, PromptRecord, TokenUsageRecord, ToolUsageRecord
    from addons.store.db import connect
    from addons.store.writer import RecordWriter

    now = datetime.now(UTC)
    built: list[list[Any]] = []
    rows = 0
    for i in range(requests):
        iid = str(uuid.uuid4())
        recs: list[Any] = [
            InterceptionStart(iid, "8c1d4f8e-0000-4000-8000-000000000001", "aigw_0123abcd", "anthropic",
                              "anthropic", "claude-bench", "Anthropic SDK (Python)", None, "centralized",
                              "sk-ant-...aaaa", now, {"username": "bench", "user_agent": "bench/1",
                                                      "route": "/v1/messages", "method": "POST", "stream": False,
                                                      "mode": "gateway"}),
            PromptRecord(iid, f"msg_{i}", "hello bench", now),
            TokenUsageRecord(iid, f"msg_{i}", 25, 12, 100, 7, {}, now, "anthropic", "claude-bench"),
        ]
        rows += 3
        if i % 2:
            recs.append(ToolUsageRecord(iid, f"msg_{i}", f"toolu_{i}", "Bash", '{"command":"ls"}', None, False,
                                        None, now))
            rows += 1
        recs.append(InterceptionEnd(iid, now, "completed", {"http_status": 200, "response_id": f"msg_{i}"}))
        built.append(recs)
    records = sum(len(r) for r in built)
    with tempfile.TemporaryDirectory(prefix="aigw-bench-writer-") as tmp:
        conn = connect(Path(tmp) / "w.duckdb")
        writer = RecordWriter(conn)
        writer.start()
        start = time.perf_counter()
        for recs in built:
            for r in recs:
                writer.submit(r)
        ok = writer.flush(timeout=600)
        elapsed = time.perf_counter() - start
        batches = writer.batches
        writer.close()
        counted = conn.execute("SELECT count(*) FROM aibridge_interceptions WHERE ended_at IS NOT NULL").fetchone()
        conn.close()
    return rounded({
        "requests": requests, "records": records, "rows": rows, "elapsed_s": elapsed, "flushed": ok,
        "rows_per_s": rows / elapsed, "records_per_s": records / elapsed, "requests_per_s": requests / elapsed,
        "batches": batches, "interceptions_written": counted[0] if counted else None,
    }, 1)


def probe_window(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """Summarise the probe's lines whose time falls in [t0, t1] (time.monotonic of this machine)."""
    qmax: list[int] = []
    flushes: list[float] = []
    records = 0
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return {"available": False}
    for line in lines:
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if t0 <= d["t"] <= t1 + 0.5:
            qmax.append(int(d["qmax"]))
            flushes += [float(f) for f in d["flush_s"]]
            records += int(d["records_delta"])
    ms = [f * 1000 for f in flushes]
    return rounded({
        "available": bool(qmax),
        "queue_depth_max": max(qmax) if qmax else None,
        "queue_depth_p99": percentiles(qmax, (99,))["p99"] if qmax else None,
        "batches": len(flushes),
        "flush_ms": percentiles(ms),
        "records_per_s": records / max(t1 - t0, 1e-9),
    }, 2)
