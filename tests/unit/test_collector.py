"""The gateway times the garbage collector's full passes (addons/app/collector.py): between requests, and
under traffic only within the time budget."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator

import pytest

from addons.app.collector import NEVER, Collector, generational

pytestmark = pytest.mark.skipif(not generational(), reason="this CPython's collector is incremental: no full passes")

CHECK = 0.01


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def full_passes() -> int:
    return gc.get_stats()[2]["collections"]


def make_due(collector: Collector) -> None:
    # Each pass over the middle generation counts towards a full pass, as allocation-driven ones do.
    for _ in range(collector.threshold[2] + 1):
        gc.collect(1)


async def wait_for(predicate: Callable[[], bool], seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / CHECK)):
        if predicate():
            return True
        await asyncio.sleep(CHECK)
    return predicate()


async def test_start_freezes_and_takes_over_full_passes_and_stop_gives_them_back() -> None:
    before = gc.get_threshold()
    collector = Collector(lambda: 0, check=CHECK)
    collector.start()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (before[0], before[1], NEVER)
    finally:
        collector.stop()
    assert gc.get_threshold() == before


async def test_allocation_alone_no_longer_starts_a_full_pass() -> None:
    collector = Collector(lambda: 1, check=60)  # busy, and never looking: only CPython could start one
    collector.start()
    try:
        passes = full_passes()
        make_due(collector)
        garbage = [[] for _ in range(50_000)]  # allocation that would trigger passes of every generation
        del garbage
        assert collector.due()
        assert full_passes() == passes
    finally:
        collector.stop()


async def test_a_due_pass_waits_while_requests_are_in_flight_and_runs_once_none_are() -> None:
    in_flight = 3
    collector = Collector(lambda: in_flight, check=CHECK, budget=0.005)
    collector.start()
    try:
        collector.took = 10.0  # the last pass took 10 s: under traffic the next waits 2,000 s
        passes = full_passes()
        make_due(collector)
        await asyncio.sleep(20 * CHECK)
        assert full_passes() == passes
        in_flight = 0
        assert await wait_for(lambda: full_passes() > passes)
        assert not collector.due()
        assert collector.took < 10.0  # timed afresh
    finally:
        collector.stop()


async def test_under_continuous_traffic_a_pass_runs_once_the_budget_allows() -> None:
    collector = Collector(lambda: 1, check=CHECK, budget=0.5)
    collector.start()
    try:
        collector.took = 0.05  # 50 ms at half the time: the next may start 100 ms after the last
        passes = full_passes()
        make_due(collector)
        assert await wait_for(lambda: full_passes() > passes)
    finally:
        collector.stop()


async def test_cyclic_garbage_in_the_oldest_generation_is_freed_by_the_timed_pass() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    collector = Collector(lambda: 0, check=CHECK)
    collector.start()
    try:
        nodes = [Node() for _ in range(1000)]
        gc.collect(1)
        gc.collect(1)  # promoted to the oldest generation, where only a full pass looks
        def old_nodes() -> int:
            return sum(1 for o in gc.get_objects(2) if type(o) is Node)

        assert old_nodes() == 1000
        del nodes
        make_due(collector)
        assert await wait_for(lambda: old_nodes() == 0)
    finally:
        collector.stop()


async def test_if_timing_fails_full_passes_go_back_to_cpython() -> None:
    def broken() -> int:
        raise RuntimeError("in-flight count unavailable")

    collector = Collector(broken, check=CHECK)
    collector.start()
    try:
        make_due(collector)
        assert await wait_for(lambda: gc.get_threshold() == collector.threshold)
        assert collector.task is not None and collector.task.done()
    finally:
        collector.stop()
