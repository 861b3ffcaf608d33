"""Hints that tell secrets apart without revealing them, for `aigw config check`, reprs and the
`credential_hint` column."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def mask_secret(secret: str, lead: int = 4, tail: int = 0) -> str:
    """At most `lead` leading and `tail` trailing characters of `secret`, each end at most a quarter of it;
    with no trailing characters asked for, the length instead (``sk-t…(51 chars)``, ``AKID…0001``)."""
    shown = len(secret) // 4
    head = secret[: min(lead, shown)]
    if not tail:
        return f"{head}…({len(secret)} chars)"
    return f"{head}…{secret[len(secret) - min(tail, shown):]}"


def mask_url(url: str | None) -> str | None:
    """`url` with any password in its user-info part replaced."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


__all__ = ["mask_secret", "mask_url"]
