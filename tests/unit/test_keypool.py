"""Provider key failover: which key a request gets after upstream 401s and 429s."""

from __future__ import annotations

from addons.upstreams.keypool import RATE_LIMITED_COOLDOWN, UNAUTHORIZED_COOLDOWN, KeyPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_key_until_it_is_refused() -> None:
    clock = Clock()
    pool = KeyPool(("k1", "k2", "k3"), clock)
    assert pool.pick() == "k1"
    pool.report("k1", 200, None)
    assert pool.pick() == "k1"
    pool.report("k1", 429, "30")
    assert pool.pick() == "k2"
    pool.report("k2", 401, None)
    assert pool.pick() == "k3"
    clock.now += 30
    assert pool.pick() == "k1"


def test_all_cooling_gives_the_soonest_retry_after() -> None:
    clock = Clock()
    pool = KeyPool(("k1", "k2"), clock)
    pool.report("k1", 401, None)
    pool.report("k2", 429, "not-a-number")
    assert pool.pick() is None
    assert pool.retry_after() == round(RATE_LIMITED_COOLDOWN)
    clock.now += RATE_LIMITED_COOLDOWN
    assert pool.pick() == "k2"
    clock.now += UNAUTHORIZED_COOLDOWN
    assert pool.pick() == "k1"
