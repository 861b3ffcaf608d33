"""The circuit breaker state machine (gobreaker semantics) with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from addons.chain.breaker import Breaker, BreakerSettings, State
from addons.settings import loader
from addons.settings.values import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kw: float) -> tuple[Breaker, list[tuple[State, State]]]:
    changes: list[tuple[State, State]] = []
    b = Breaker(BreakerSettings(**{"failure_threshold": 3, "interval": 10, "timeout": 30,  # type: ignore[arg-type]
                                   "max_requests": 2, **kw}),
                clock, lambda a, z: changes.append((a, z)))
    return b, changes


def fail(b: Breaker, n: int = 1) -> None:
    for _ in range(n):
        ticket = b.allow()
        assert ticket is not None
        b.failure(ticket)


def succeed(b: Breaker, n: int = 1) -> None:
    for _ in range(n):
        ticket = b.allow()
        assert ticket is not None
        b.success(ticket)


def test_consecutive_failures_open_it() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    fail(b, 2)
    succeed(b)  # a success resets the consecutive count
    fail(b, 2)
    assert b.current() is State.CLOSED
    fail(b)
    assert b.current() is State.OPEN
    assert changes == [(State.CLOSED, State.OPEN)]
    assert b.allow() is None
    assert b.retry_after() == 30
    clock.now += 12.5
    assert b.retry_after() == 18


def test_failures_in_different_windows_do_not_add_up() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    fail(b, 2)
    clock.now += 10.5  # a new interval window clears the counts
    fail(b, 2)
    assert b.current() is State.CLOSED
    fail(b)
    assert b.current() is State.OPEN


def test_zero_interval_never_clears() -> None:
    clock = Clock()
    b, _ = breaker(clock, interval=0)
    fail(b, 2)
    clock.now += 10_000
    fail(b)
    assert b.current() is State.OPEN


def test_half_open_lets_max_requests_through_and_closes_after_as_many_successes() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    fail(b, 3)
    clock.now += 30
    assert b.current() is State.HALF_OPEN
    first, second = b.allow(), b.allow()
    assert first is not None and second is not None
    assert b.allow() is None  # only max_requests probes in flight
    b.success(first)
    assert b.current() is State.HALF_OPEN
    b.success(second)
    assert b.current() is State.CLOSED
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.CLOSED)]


def test_a_half_open_failure_reopens_it_for_a_full_timeout() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    fail(b, 3)
    clock.now += 31
    ticket = b.allow()
    assert ticket is not None
    b.failure(ticket)
    assert b.current() is State.OPEN
    assert b.retry_after() == 30


def test_released_probe_frees_its_slot_without_counting() -> None:
    clock = Clock()
    b, _ = breaker(clock, max_requests=1)
    fail(b, 3)
    clock.now += 30
    ticket = b.allow()
    assert ticket is not None and b.allow() is None
    b.release(ticket)
    assert b.current() is State.HALF_OPEN
    succeed(b)
    assert b.current() is State.CLOSED


def test_outcomes_from_an_earlier_generation_are_ignored() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    slow = b.allow()
    assert slow is not None
    fail(b, 3)  # opens: a new generation
    b.success(slow)  # the long request that started while closed cannot close it
    assert b.current() is State.OPEN
    clock.now += 30
    late = b.allow()
    assert late is not None
    b.failure(slow)
    assert b.current() is State.HALF_OPEN


# Property: the rules hold over random sequences of requests, outcomes and time steps.
OPS = st.lists(st.one_of(st.tuples(st.sampled_from(["ok", "fail", "release"]), st.integers(0, 5)),
                         st.tuples(st.just("allow"), st.just(0)),
                         st.tuples(st.just("tick"), st.sampled_from([0.5, 3.0, 11.0, 31.0]))), max_size=80)
EDGES = {(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.OPEN),
         (State.HALF_OPEN, State.CLOSED)}


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(1, 4), st.integers(1, 3))
def test_rules_hold_for_any_sequence(ops: list[tuple[str, float]], threshold: int, max_requests: int) -> None:
    clock = Clock()
    b, changes = breaker(clock, failure_threshold=threshold, max_requests=max_requests)
    tickets: list[int] = []
    for op, arg in ops:
        before = b.current()
        if op == "tick":
            clock.now += arg
            continue
        if op == "allow":
            in_flight = b.requests
            ticket = b.allow()
            if before is State.CLOSED:
                assert ticket is not None
            elif before is State.OPEN:
                assert ticket is None
            else:
                assert (ticket is None) == (in_flight >= max_requests)
            if ticket is not None:
                tickets.append(ticket)
            continue
        if not tickets:
            continue
        ticket = tickets.pop(int(arg) % len(tickets))
        stale = ticket != b.generation
        failures = b.consecutive_failures
        getattr(b, {"ok": "success", "fail": "failure", "release": "release"}[op])(ticket)
        after = b.current()
        if stale:
            assert after is before  # outcomes of an earlier generation change nothing
        elif op == "fail" and (before is State.HALF_OPEN or failures + 1 >= threshold):
            assert after is State.OPEN
        elif op == "fail" or op == "release":
            assert after is before
        if after is State.OPEN:
            assert b.allow() is None
        if after is State.HALF_OPEN:
            assert b.requests <= max_requests
    assert set(changes) <= EDGES


def test_settings_from_the_environment() -> None:
    assert loader.load(None, {}).circuit_breaker is None  # off by default
    defaults = loader.load(None, {"CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED": "true"})
    assert defaults.circuit_breaker == BreakerSettings(5, 10.0, 30.0, 3)
    assert (defaults.upstream_connect_timeout, defaults.upstream_idle_timeout) == (10.0, 300.0)
    tuned = loader.load(None, {
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED": "1", "CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL": "0", "CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT": "1m",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_MAX_REQUESTS": "1", "CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT": "0",
        "CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT": "1500ms"})
    assert tuned.circuit_breaker == BreakerSettings(2, 0.0, 60.0, 1)
    assert (tuned.upstream_connect_timeout, tuned.upstream_idle_timeout) == (1.5, None)
    for name, value in (("CIRCUIT_BREAKER_TIMEOUT", "0"), ("CIRCUIT_BREAKER_MAX_REQUESTS", "0"),
                        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "x"), ("UPSTREAM_IDLE_TIMEOUT", "soon")):
        try:
            loader.load(None, {"CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED": "true", f"CODER_AIBRIDGE_{name}": value})
        except ConfigError as e:
            assert str(e).startswith(f"CODER_AIBRIDGE_{name}: ")
        else:
            raise AssertionError(f"{name}={value} was accepted")
