"""Run `aigw` exactly as `python -m addons.cli ...`, plus a read-only recorder probe.

    AIGW_BENCH_WRITER_STATS=<file> python -m bench_lib.aigw_probe serve [flags]

The probe is a daemon thread that polls the RecordWriter's public counters
(queue_depth, batches, rows_written, last_flush_seconds) every 10 ms and
appends one JSON line per 0.5 s to the stats file: the queue depth seen (max,
last), and the write time and size of every batch committed since the last
line. Polling ints costs nothing measurable; nothing in the gateway changes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import orjson

from addons.store import writer as writer_module

SAMPLE_S = 0.01
LINE_S = 0.5


def _probe(writer: Any, path: str) -> None:
    with open(path, "ab", buffering=0) as out:
        last_batches = writer.batches
        last_rows = writer.rows_written
        qmax = 0
        flushes: list[float] = []
        next_line = time.monotonic() + LINE_S
        while True:
            time.sleep(SAMPLE_S)
            depth = writer.queue_depth
            qmax = max(qmax, depth)
            batches = writer.batches
            if batches != last_batches:
                # One batch every >=250 ms, so a 10 ms poll sees each one; if two landed, both get the last time.
                flushes.extend([writer.last_flush_seconds] * (batches - last_batches))
            now = time.monotonic()
            if now >= next_line:
                rows = writer.rows_written
                out.write(orjson.dumps({
                    "t": now, "qmax": qmax, "q": depth, "records": rows, "records_delta": rows - last_rows,
                    "batches": batches, "flush_s": flushes,
                }) + b"\n")
                last_rows = rows
                qmax = 0
                flushes = []
                next_line = now + LINE_S
            last_batches = batches


def install(path: str) -> None:
    original = writer_module.RecordWriter.start

    probed: set[int] = set()

    def start(self: Any) -> None:
        original(self)
        if id(self) in probed:
            return
        probed.add(id(self))
        threading.Thread(target=_probe, args=(self, path), name="aigw-bench-probe", daemon=True).start()

    writer_module.RecordWriter.start = start  # type: ignore[method-assign]


def main() -> None:
    path = os.environ.get("AIGW_BENCH_WRITER_STATS")
    if path:
        install(path)
    from addons.cli import main as aigw_main

    aigw_main(sys.argv[1:])


if __name__ == "__main__":
    main()
