"""The one duration grammar of aigw: ``90d``, ``720h``, ``30m``, ``45s``, ``1h30m``, ``500ms``.

Settings, mitmproxy ``aigw_*`` options, key expiry and the analysts' look-backs
(``--since 30d``, which also take weeks: ``2w``) all read durations with :func:`parse_duration`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from addons.settings.values import ConfigError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_DURATION_UNIT = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds", "ms": "milliseconds"}


def parse_duration(text: str, name: str, zero: str | None = None, *, weeks: bool = False) -> timedelta | None:
    """Parse ``90d``, ``720h``, ``30m``, ``45s``, ``1h30m``, ``500ms`` (and ``2w`` when `weeks`).

    Only the analysts' look-backs (``--since 2w``) take weeks; settings never did.
    ``0`` (or any zero duration) returns None, whose meaning is the caller's: `zero` says it in the
    error (e.g. "keeps forever"). Anything else raises :class:`ConfigError` naming `name`.
    """
    cleaned = str(text).strip().lower()
    error = ConfigError(
        f"{name}: invalid duration {str(text).strip()!r} "
        f"(use e.g. 90d, 720h, 30m, 45s or 1h30m{f'; 0 {zero}' if zero else ''})"
    )
    if cleaned == "0":
        return None
    parts = _DURATION_PART.findall(cleaned)
    if not cleaned or _DURATION_PART.sub("", cleaned) or (not weeks and any(u == "w" for _, u in parts)):
        raise error
    try:
        total = sum(
            (timedelta(**{_DURATION_UNIT[unit]: float(n)}) for n, unit in parts),
            timedelta(),
        )
    except OverflowError:
        raise error from None
    return total or None


def parse_seconds(value: Any, name: str) -> float | None:
    """A setting holding a duration, in seconds; 0 (None) means no limit."""
    parsed = parse_duration(str(value), name, "disables it")
    return None if parsed is None else parsed.total_seconds()


def option_seconds(text: str, name: str, *, allow_zero: bool = False, example: str = "10m") -> float:
    """An `aigw_*` mitmproxy option holding a duration, in seconds; mitmproxy's OptionsError naming it
    when invalid. 0 is refused unless `allow_zero`."""
    from mitmproxy import exceptions  # only the gateway's addons call this: the CLI never loads mitmproxy

    try:
        value = parse_duration(text, name)
    except ConfigError as e:
        raise exceptions.OptionsError(str(e)) from None
    if value is None and not allow_zero:
        raise exceptions.OptionsError(f"{name} must be a positive duration, e.g. {example}")
    return 0.0 if value is None else value.total_seconds()


__all__ = ["option_seconds", "parse_duration", "parse_seconds"]
