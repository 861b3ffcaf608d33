"""Run `aigw` exactly as `python -m addons.cli ...`, plus a read-only recorder probe.

    AIGW_BENCH_WRITER_STATS=<file> python -m bench_lib.aigw_probe serve [flags]

The probe chains onto the RecordWriter's public `on_batch` hook (records and
write time of every committed batch) and polls its `queue_depth` every 50 ms
from a daemon thread, appending one JSON line per 0.5 s to the stats file.
That is 20 wake-ups a second and nothing on the event loop; the gateway is
otherwise exactly `python -m addons.cli`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Any

import orjson

from addons.store import writer as writer_module

SAMPLE_S = 0.05
LINE_S = 0.5


def _hook(writer: Any) -> deque[tuple[int, float]]:
    """Chain onto the writer's batch hook (later hooks, e.g. metrics, chain onto this one)."""
    batches: deque[tuple[int, float]] = deque()  # (records, seconds) per committed batch
    previous = writer.on_batch

    def on_batch(records: int, seconds: float) -> None:
        batches.append((records, seconds))
        if previous is not None:
            previous(records, seconds)

    writer.on_batch = on_batch
    return batches


def _sample(writer: Any, batches: deque[tuple[int, float]], path: str) -> None:
    with open(path, "ab", buffering=0) as out:
        qmax = 0
        next_line = time.monotonic() + LINE_S
        while True:
            time.sleep(SAMPLE_S)
            qmax = max(qmax, writer.queue_depth)
            now = time.monotonic()
            if now >= next_line:
                done = [batches.popleft() for _ in range(len(batches))]
                out.write(orjson.dumps({
                    "t": now, "qmax": qmax, "q": writer.queue_depth,
                    "records_delta": sum(r for r, _ in done), "flush_s": [sec for _, sec in done],
                }) + b"\n")
                qmax = 0
                next_line = now + LINE_S


def install(path: str) -> None:
    original = writer_module.RecordWriter.start
    probed: set[int] = set()

    def start(self: Any) -> None:
        original(self)
        if id(self) in probed:
            return
        probed.add(id(self))
        batches = _hook(self)
        threading.Thread(target=_sample, args=(self, batches, path), name="aigw-bench-probe", daemon=True).start()

    writer_module.RecordWriter.start = start  # type: ignore[method-assign]


def main() -> None:
    path = os.environ.get("AIGW_BENCH_WRITER_STATS")
    if path:
        install(path)
    from addons.cli import main as aigw_main

    aigw_main(sys.argv[1:])


if __name__ == "__main__":
    main()
