"""Settings of the request policies: the circuit breaker (``addons/chain/breaker.py``) and
governance limits and budgets (``addons/chain/limits.py``)."""

from __future__ import annotations

from typing import Any

from addons.chain.breaker import BreakerSettings
from addons.chain.limits import PERIODS, GovernanceSettings, Limits
from addons.settings.durations import parse_duration
from addons.settings.values import ConfigError, Picked, parse_bool, parse_choice, parse_count, parse_limit


def circuit_breaker(picked: Picked) -> BreakerSettings | None:
    """Coder's breaker settings (gobreaker's defaults), or None while it is disabled."""
    if not picked.parsed("circuit_breaker_enabled", parse_bool, False):
        return None
    defaults = BreakerSettings()

    def interval(v: Any, name: str) -> float:
        parsed = parse_duration(str(v), name, "never clears the failures")
        return 0.0 if parsed is None else parsed.total_seconds()

    def timeout(v: Any, name: str) -> float:
        parsed = parse_duration(str(v), name)
        if parsed is None:
            raise ConfigError(f"{name}: must be longer than 0 (how long an open breaker rejects requests)")
        return parsed.total_seconds()

    return BreakerSettings(
        failure_threshold=picked.parsed("circuit_breaker_failure_threshold", parse_count, defaults.failure_threshold),
        interval=picked.parsed("circuit_breaker_interval", interval, defaults.interval),
        timeout=picked.parsed("circuit_breaker_timeout", timeout, defaults.timeout),
        max_requests=picked.parsed("circuit_breaker_max_requests", parse_count, defaults.max_requests),
    )


def _rate(v: Any, name: str) -> float:
    try:
        parsed = float(str(v).strip())
    except ValueError:
        parsed = -1.0
    if not parsed >= 0 or parsed == float("inf"):
        raise ConfigError(f"{name}: invalid rate {str(v)!r} (expected requests per second; 0: no limit)")
    return parsed


def _ratio(v: Any, name: str) -> float:
    try:
        parsed = float(str(v).strip())
    except ValueError:
        parsed = -1.0
    if not 0 < parsed <= 1:
        raise ConfigError(f"{name}: invalid ratio {str(v)!r} (expected a number above 0, at most 1)")
    return parsed


def governance(picked: Picked) -> GovernanceSettings:
    def limit(key: str) -> int | None:
        return picked.parsed(key, parse_limit, 0) or None

    return GovernanceSettings(
        max_concurrency=picked.parsed("max_concurrency", parse_limit, 0),
        rate_limit=picked.parsed("rate_limit", _rate, 0.0),
        defaults=Limits(limit("default_rpm"), limit("default_tpm"), limit("default_max_streams")),
        budget_policy=picked.parsed("budget_policy", parse_choice("highest", "lowest"), "highest"),
        budget_period=picked.parsed("budget_period", parse_choice(*PERIODS), "month"),
        budget_unpriced=picked.parsed("budget_unpriced", parse_choice("allow", "deny"), "allow"),
        budget_warn_ratio=picked.parsed("budget_warn_ratio", _ratio, 0.8),
    )


__all__ = ["circuit_breaker", "governance"]
