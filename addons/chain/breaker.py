"""A circuit breaker with sony/gobreaker's semantics, as Coder's AI Gateway uses it.

Pure state machine: no mitmproxy, no I/O, an injectable clock. The addon that
puts one breaker in front of each (instance, endpoint, model) is `addons.chain.circuit`.

- **closed**: requests pass. Outcomes are counted in fixed windows of
  `interval` (a new window clears the counts); `failure_threshold`
  consecutive failures open the breaker.
- **open** for `timeout`: every request is rejected without reaching the upstream.
- **half-open** afterwards: at most `max_requests` requests pass; the first
  failure reopens it, `max_requests` consecutive successes close it.

`allow()` hands out a ticket (the breaker's generation); an outcome reported
with a ticket from an earlier generation (the state or the window changed
since) is ignored, as in gobreaker. `release()` reports a request that ended
without an upstream verdict (the client went away): it frees its half-open
slot and counts as nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class State(Enum):
    CLOSED = 0.0
    HALF_OPEN = 0.5
    OPEN = 1.0  # the values are the state gauge's (Coder's StateToGaugeValue)


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    interval: float = 10.0  # seconds; 0: counts are never cleared while closed
    timeout: float = 30.0  # seconds open before half-open
    max_requests: int = 3  # requests let through while half-open


class Breaker:
    __slots__ = ("_expiry", "_generation", "_on_change", "clock", "consecutive_failures", "consecutive_successes",
                 "requests", "settings", "state")

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[State, State], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._on_change = on_change
        self.state = State.CLOSED
        self._generation = 0
        self.requests = self.consecutive_failures = self.consecutive_successes = 0
        self._expiry = 0.0
        self._new_generation(clock())

    @property
    def generation(self) -> int:
        return self._generation

    def current(self) -> State:
        """The state now (an open breaker whose timeout passed is half-open)."""
        self._advance(self.clock())
        return self.state

    def allow(self) -> int | None:
        """A ticket for a request that may go upstream, or None: rejected."""
        self._advance(self.clock())
        if self.state is State.OPEN:
            return None
        if self.state is State.HALF_OPEN and self.requests >= max(1, self.settings.max_requests):
            return None
        self.requests += 1
        return self._generation

    def success(self, ticket: int) -> None:
        if not self._same(ticket):
            return
        self.consecutive_successes += 1
        self.consecutive_failures = 0
        if self.state is State.HALF_OPEN and self.consecutive_successes >= max(1, self.settings.max_requests):
            self._set(State.CLOSED, self.clock())

    def failure(self, ticket: int) -> None:
        if not self._same(ticket):
            return
        self.consecutive_failures += 1
        self.consecutive_successes = 0
        if self.state is State.HALF_OPEN or (
                self.state is State.CLOSED and self.consecutive_failures >= self.settings.failure_threshold):
            self._set(State.OPEN, self.clock())

    def release(self, ticket: int) -> None:
        if self._same(ticket) and self.requests > 0:
            self.requests -= 1

    def retry_after(self) -> int:
        """Whole seconds until an open breaker lets requests through again (at least 1)."""
        self._advance(self.clock())
        if self.state is not State.OPEN:
            return 1
        return max(1, math.ceil(self._expiry - self.clock()))

    # -- internals ---------------------------------------------------------------

    def _same(self, ticket: int) -> bool:
        self._advance(self.clock())
        return ticket == self._generation

    def _advance(self, now: float) -> None:
        if self.state is State.CLOSED:
            if self._expiry and self._expiry <= now:
                self._new_generation(now)
        elif self.state is State.OPEN and self._expiry <= now:
            self._set(State.HALF_OPEN, now)

    def _set(self, state: State, now: float) -> None:
        if state is self.state:
            return
        previous, self.state = self.state, state
        self._new_generation(now)
        if self._on_change is not None:
            self._on_change(previous, state)

    def _new_generation(self, now: float) -> None:
        self._generation += 1
        self.requests = self.consecutive_failures = self.consecutive_successes = 0
        if self.state is State.CLOSED:
            self._expiry = now + self.settings.interval if self.settings.interval > 0 else 0.0
        elif self.state is State.OPEN:
            self._expiry = now + self.settings.timeout
        else:
            self._expiry = 0.0
