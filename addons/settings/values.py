"""Where a setting's value came from, and the small parsers every source's values go through.

A bad value fails with a one-line :class:`ConfigError` that names the variable,
flag or YAML path to fix (the value's origin).
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem. ``str(e)`` is one line that starts with the variable to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


__all__ = ["ConfigError"]
