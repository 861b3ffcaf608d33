"""When the garbage collector makes its full passes: between requests, not in the middle of streams.

Everything loaded at start-up (mitmproxy, DuckDB, botocore's models, prices) lives as long as the
process, so it is frozen (`gc.freeze`) and no pass traverses it. Under load, what is left for a full
pass is the open flows: their connections, layers, parsers and records. CPython's generational
collector starts a full pass once a quarter as many objects were promoted since the last one as
survived it, which with hundreds of open streams is every few seconds. Each pass stops every stream
for as long as it takes to traverse them all: 100 to 245 ms with 500 to 1,000 streams on the bench
machine (BENCHMARKS.md), and it found next to nothing to free, since those objects are alive and what
dies is mostly freed by reference counting or the young generations' passes. One 245 ms pause in a
20-second run delays about 1 % of all events by up to that long: the p99 itself, wherever the gateway
otherwise keeps up.

So the young generations stay automatic, and the full pass is the gateway's to time. It runs once
CPython would have wanted one (`due`), checked every `CHECK` seconds: as soon as no request is in
flight, and under traffic only as often as keeps full passes under `BUDGET` of the time, judged by
how long the last one took. A pass of 245 ms then waits 49 s for the next, a share of the time too
small to reach the p99. With 16 requests in flight a pass took 21 to 53 ms and ran every 5 to 9 s,
which keeps the cyclic garbage of finished flows (objects promoted while their request ran) from
piling up.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("aigw.collector")

CHECK = 1.0  # seconds between looks at the load
BUDGET = 0.005  # the share of the time full passes may take while requests are in flight
FIRST_GUESS = 0.25  # seconds a full pass is assumed to take until one was timed: the longest seen on the bench
NEVER = 2**31 - 1  # a full-pass threshold CPython never reaches


def generational() -> bool:
    """Whether this CPython's collector honours a full-pass threshold: all but the incremental collector of
    3.14.0-3.14.4, which ignores it (3.14.5 and 3.15 went back to the generational one)."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], NEVER)
    honoured = gc.get_threshold()[2] == NEVER
    gc.set_threshold(*before)
    return honoured


class Collector:
    """Takes over the full garbage-collection passes of one gateway process (see the module's text)."""

    def __init__(self, busy: Callable[[], int], check: float = CHECK, budget: float = BUDGET) -> None:
        self.busy = busy  # how many requests are in flight
        self.check = check
        self.budget = budget
        self.threshold = gc.get_threshold()  # CPython's, given back by `stop`
        self.task: asyncio.Task[None] | None = None
        self.last = 0.0  # when the last full pass ended (monotonic seconds)
        self.took = FIRST_GUESS  # how long it took

    def start(self) -> None:
        """Freeze what start-up loaded, then time the full passes from here on."""
        gc.collect()
        gc.freeze()
        if not generational():
            return  # an incremental collector spreads the old generation over short steps: nothing to move
        gc.set_threshold(self.threshold[0], self.threshold[1], NEVER)
        self.last = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self.run(), name="aigw full gc passes")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
            gc.set_threshold(*self.threshold)

    def due(self) -> bool:
        # gc.get_count()[2]: young-generation passes since the last full one, as CPython counts them.
        return gc.get_count()[2] > self.threshold[2]

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.check)
                if self.due() and (not self.busy() or time.monotonic() - self.last >= self.took / self.budget):
                    self.collect()
        except Exception:
            # Without this task nothing would start a full pass: hand them back to CPython.
            log.exception("timing the garbage collector's full passes failed; CPython times them again")
            gc.set_threshold(*self.threshold)

    def collect(self) -> None:
        started = time.monotonic()
        freed = gc.collect()
        self.last = time.monotonic()
        self.took = self.last - started
        log.debug("full garbage-collection pass: %d objects freed in %.0f ms", freed, self.took * 1000)


__all__ = ["Collector", "generational"]
