"""The limiter arithmetic against simple reference models (hypothesis), budget periods and policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.chain.limits import (
    WINDOW,
    Limits,
    SlidingWindow,
    TokenBucket,
    effective_budget,
    model_allowed,
    parse_models,
    period_bounds,
    retry_after_header,
)

# Operations at non-decreasing times: (time step, amount); amount 0 only reads.
steps = st.lists(st.tuples(st.floats(0, 30, allow_nan=False), st.integers(0, 50)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 200))
def test_sliding_window_matches_a_log_of_every_addition(ops: list[tuple[float, int]], limit: int) -> None:
    window, log, now = SlidingWindow(), [], 0.0
    for step, amount in ops:
        now += step
        window.add(now, amount)
        if amount > 0:
            log.append((now, amount))
        live = [(t, a) for t, a in log if t > now - WINDOW]
        assert window.used(now) == sum(a for _, a in live)
        wait = window.retry_after(now, limit)
        # After `wait` seconds one more fits, and (when it had to wait) not a moment earlier.
        assert sum(a for t, a in live if t > now + wait + 1e-9 - WINDOW) + 1 <= limit
        if wait > 0:
            earlier = now + wait - 1e-6
            assert sum(a for t, a in live if t > earlier - WINDOW) + 1 > limit


@settings(max_examples=300, deadline=None)
@given(st.floats(0.5, 20), st.lists(st.floats(0, 2, allow_nan=False), max_size=100))
def test_token_bucket_matches_its_definition(rate: float, gaps: list[float]) -> None:
    """Reference: tokens = min(capacity, tokens + elapsed * rate); a request takes one whole token."""
    bucket, tokens, now = TokenBucket(rate, 0.0), max(1.0, rate), 0.0
    capacity = tokens
    for gap in gaps:
        now += gap
        tokens = min(capacity, tokens + gap * rate)
        allowed = tokens >= 1.0 - 1e-9  # a whole token, up to float noise
        assert bucket.take(now) is allowed
        if allowed:
            tokens = max(0.0, tokens - 1.0)
        else:
            assert bucket.retry_after(now) == pytest.approx((1.0 - tokens) / rate)


def test_window_resets_after_a_minute() -> None:
    window = SlidingWindow()
    window.add(0.0, 40)
    window.add(10.0, 30)
    assert window.used(59.9) == 70 and window.retry_after(59.9, 50, need=1) == pytest.approx(0.1)
    assert window.used(60.0) == 30 and window.reset_in(60.0) == pytest.approx(10.0)
    assert window.empty(70.0)


def test_stricter_of_key_and_user_and_override_over_defaults() -> None:
    defaults = Limits(rpm=100, tpm=None, max_streams=4)
    user = Limits(rpm=60).over(defaults)
    key = Limits(rpm=30, tpm=1000).over(defaults)
    assert user == Limits(60, None, 4) and key == Limits(30, 1000, 4)
    assert user.stricter(key) == Limits(30, 1000, 4)


def test_periods_are_utc_calendar_boundaries() -> None:
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds("day", now) == (datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("week", now)[0] == datetime(2026, 12, 28, tzinfo=UTC)  # a Monday
    assert period_bounds("month", now) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError):
        period_bounds("year", now)


def test_budget_policy_and_models() -> None:
    assert effective_budget(None, [500.0, 50.0], "highest") == 500.0
    assert effective_budget(None, [500.0, 50.0], "lowest") == 50.0
    assert effective_budget(5.0, [500.0], "highest") == 5.0  # the user's override wins
    assert effective_budget(None, [], "highest") is None
    patterns = parse_models(" claude-sonnet-*, gpt-5* ,claude-sonnet-*")
    assert patterns == ("claude-sonnet-*", "gpt-5*")
    assert model_allowed("gpt-5.3-codex", patterns) and not model_allowed("claude-opus-4-1", patterns)
    with pytest.raises(ValueError):
        parse_models(" , ")
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"
