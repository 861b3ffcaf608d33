"""Where a setting's value came from, and the small parsers every source's values go through.

A bad value fails with a one-line :class:`ConfigError` that names the variable,
flag or YAML path to fix (the value's origin). Parsers take the raw value (a
string from the environment or a flag; a string, number, boolean or list from
YAML) and that origin.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem. ``str(e)`` is one line that starts with the variable to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True, slots=True)
class Value:
    value: Any  # str from env/flags; str, int, bool or list from YAML
    origin: str  # the env var, flag or YAML path it came from


def clean(value: Any) -> Any:
    """Empty strings and empty lists count as unset."""
    if isinstance(value, str):
        value = value.strip()
    return None if value in ("", None, []) else value


class Picked:
    """Each option's winning value (see ``sources.pick``) by option key; None: unset."""

    def __init__(self, values: Mapping[str, Value | None]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Value | None:
        return self._values[key]

    def parsed[T, D](self, key: str, parse: Callable[[Any, str], T], default: D) -> T | D:
        """The option's value through `parse` (which names its origin in errors), or `default` when unset."""
        found = self._values[key]
        return default if found is None else parse(found.value, found.origin)


def parse_text(value: Any, _name: str) -> str:
    return str(value).strip()


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: invalid boolean {str(value).strip()!r} (expected true or false)")


def split_list(value: Any) -> list[str]:
    """A YAML list or a comma-separated string, as stripped non-empty strings."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [s for s in (str(item).strip() for item in items) if s]


def parse_cidrs(value: Any, name: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in split_list(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: invalid CIDR {item!r} (e.g. 10.0.0.0/8 or fd00::/8)") from None
    return tuple(networks)


_SIZE = re.compile(r"(\d+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
              "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(value: Any, name: str) -> int:
    """`32MiB`, `500KiB`, `64k`, `1048576` -> bytes (at least 1)."""
    text = str(value).strip()
    match = _SIZE.fullmatch(text)
    size = int(match[1]) * _SIZE_UNIT[(match[2] or "").lower()] if match else 0
    if size < 1:
        raise ConfigError(f"{name}: invalid size {text!r} (use e.g. 32MiB, 500KiB or a number of bytes)")
    return size


def parse_count(value: Any, name: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}: invalid count {text!r} (expected a positive integer)")
    return int(text)


def parse_limit(value: Any, name: str) -> int:
    """A limit: a whole number, 0 meaning no limit."""
    text = str(value).strip()
    if not text.isdigit():
        raise ConfigError(f"{name}: invalid limit {text!r} (expected a whole number; 0: no limit)")
    return int(text)


def parse_workers(value: Any, name: str) -> int:
    """A count of processes, or `auto`: one per CPU this process may run on."""
    if str(value).strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return parse_count(value, name)


def parse_choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(f"{name}: invalid value {str(value)!r} (expected {' or '.join(choices)})")
        return text

    return parse


_HOSTPORT = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<port6>\d+)|(?P<host>[A-Za-z0-9.-]*):(?P<port>\d+)")


def parse_hostport(value: Any, name: str) -> tuple[str, int]:
    text = str(value).strip()
    error = ConfigError(f"{name}: invalid address {text!r} (expected host:port with port 1-65535)")
    match = _HOSTPORT.fullmatch(text)
    if match is None:
        raise error
    host, port = (match["v6"], match["port6"]) if match["v6"] else (match["host"], match["port"])
    if match["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise error from None
    if not 1 <= int(port) <= 65535:
        raise error
    return host, int(port)


def parse_address(value: Any, name: str) -> str:
    """A host:port kept as text, once :func:`parse_hostport` accepts it."""
    parse_hostport(value, name)
    return str(value).strip()


def parse_url(value: Any, name: str) -> str:
    """An absolute http(s) URL without its trailing slash.

    The URL is never echoed in errors: it may carry credentials.
    """
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        has_host = bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{name}: must be an absolute http(s) URL (it does not parse)") from None
    if parts.scheme not in ("http", "https"):
        scheme = repr(parts.scheme) if parts.scheme else "missing"
        raise ConfigError(f"{name}: must be an absolute http(s) URL (scheme is {scheme})")
    if not has_host:
        raise ConfigError(f"{name}: must be an absolute http(s) URL (the host is missing)")
    return text.rstrip("/")


def parse_file(value: Any, name: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}: no such file {str(path)!r}")
    return path


__all__ = [
    "ConfigError",
    "IPNetwork",
    "Picked",
    "Value",
    "clean",
    "parse_address",
    "parse_bool",
    "parse_choice",
    "parse_cidrs",
    "parse_count",
    "parse_file",
    "parse_hostport",
    "parse_limit",
    "parse_size",
    "parse_text",
    "parse_url",
    "parse_workers",
    "split_list",
]
