"""Pure limiter arithmetic: sliding windows, token buckets, budget periods and model allowlists.

No mitmproxy, no store, no clock of its own: every call takes `now` (seconds, monotonic for the
limiters; an aware datetime for budget periods), so the arithmetic is exact under test and the
addon (addons/chain/governance.py) owns time and state.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta

WINDOW = 60.0  # seconds: requests and tokens "per minute" are over the last 60 s


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits of one subject (a user, a key, a group or the defaults); None: no limit here."""

    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # input + output tokens per minute
    max_streams: int | None = None  # requests in flight at once

    def stricter(self, other: Limits) -> Limits:
        """Field by field, the tighter of two limits that both apply (a key's and its user's)."""
        return Limits(*(b if a is None else a if b is None else min(a, b)
                        for a, b in ((self.rpm, other.rpm), (self.tpm, other.tpm),
                                     (self.max_streams, other.max_streams))))

    def over(self, base: Limits) -> Limits:
        """`self` where set, else `base` (a user's own setting over the defaults)."""
        return replace(base, **{f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None})


NO_LIMITS = Limits()


def model_allowed(model: str, patterns: tuple[str, ...] | None) -> bool:
    """Whether `model` matches one of the glob patterns (case-sensitive, like model ids)."""
    return patterns is None or any(fnmatch.fnmatchcase(model, p) for p in patterns)


def parse_models(text: str) -> tuple[str, ...]:
    """`'claude-sonnet-*, gpt-5*'` -> ('claude-sonnet-*', 'gpt-5*'); raises ValueError when empty."""
    patterns = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not patterns:
        raise ValueError("a model allowlist needs at least one pattern (e.g. 'claude-sonnet-*,gpt-5*')")
    return patterns


class SlidingWindow:
    """Amounts added over the last WINDOW seconds, exactly (one entry per addition).

    Entries are (time, amount); memory is bounded by the additions within one window, which
    the rpm/tpm limits themselves keep small per subject.
    """

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def _expire(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= now - WINDOW:
            self.total -= entries.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self.total

    def add(self, now: float, amount: int = 1) -> None:
        if amount > 0:
            self._expire(now)
            self.entries.append((now, amount))
            self.total += amount

    def discard(self, at: float, amount: int = 1) -> None:
        """Take back an addition made at `at` (a request that turned out not to count)."""
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i] == (at, amount):
                del self.entries[i]
                self.total -= amount
                return

    def retry_after(self, now: float, limit: int, need: int = 1) -> float:
        """Seconds until `need` more fits under `limit` (0 if it fits now)."""
        self._expire(now)
        excess = self.total + need - limit
        if excess <= 0:
            return 0.0
        freed = 0
        for at, amount in self.entries:
            freed += amount
            if freed >= excess:
                return max(0.0, at + WINDOW - now)
        return WINDOW  # `need` alone exceeds the limit: a full window is the honest answer

    def reset_in(self, now: float) -> float:
        """Seconds until the window has fully drained."""
        self._expire(now)
        return max(0.0, self.entries[-1][0] + WINDOW - now) if self.entries else 0.0

    def empty(self, now: float) -> bool:
        self._expire(now)
        return not self.entries


_EPSILON = 1e-9  # float noise: 2.32 - 0.32 is 1.9999999999999998, and half of it must still be a whole token


class TokenBucket:
    """`rate` requests per second with a burst of `rate` (Coder's per-IP rate limit, per process)."""

    __slots__ = ("at", "capacity", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0 - _EPSILON:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def retry_after(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 - _EPSILON else (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds, never 0 for a refusal (clients would retry at once)."""
    return str(max(1, math.ceil(seconds)))


PERIODS = ("day", "week", "month")


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC budget period holding `now`: [start, end). Weeks start on Monday (ISO)."""
    now = now.astimezone(UTC)
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=now.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"unknown budget period {period!r} (expected {', '.join(PERIODS)})")


MAX_BUDGET_USD = 1_000_000.0  # Coder's cap per member per period


def effective_budget(override: float | None, group_budgets: list[float], policy: str) -> float | None:
    """A user's budget: their override wins; else, of their budgeted groups, the highest or lowest."""
    if override is not None:
        return override
    if not group_budgets:
        return None
    return max(group_budgets) if policy == "highest" else min(group_budgets)


@dataclass(frozen=True, slots=True)
class GovernanceSettings:
    """The gateway-wide part of governance (per-user and per-key settings live in the database)."""

    max_concurrency: int = 0  # intercepted requests in flight per process; 0: off
    rate_limit: float = 0.0  # intercepted requests per second per client IP and process; 0: off
    defaults: Limits = NO_LIMITS  # everyone's limits unless their user or key says otherwise
    budget_policy: str = "highest"  # several budgeted groups: the highest or the lowest budget
    budget_period: str = "month"
    budget_unpriced: str = "allow"  # a model without a price, for a user with a budget: allow | deny
    budget_warn_ratio: float = 0.8  # spend/budget from which responses carry x-aigw-budget-warning


DEFAULT_GOVERNANCE = GovernanceSettings()
