"""The gateway's settings, resolved: one frozen :class:`Settings`, and the defaults it starts from.

``addons/settings/loader.py`` builds it from the options (``options.py``) read from
flags, environment and the YAML file (``sources.py``); provider instances are
``instances.py``'s. Code that builds a :class:`Settings` itself (tests, tools) gets
these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from addons.chain.breaker import BreakerSettings
from addons.chain.limits import DEFAULT_GOVERNANCE, GovernanceSettings
from addons.settings.home import Home
from addons.settings.instances import Instance
from addons.settings.values import IPNetwork

DEFAULT_RETENTION = timedelta(days=60)
DEFAULT_DB = Path("data/aibridge.duckdb")
DEFAULT_LISTEN = "127.0.0.1:8888"
DEFAULT_PROMETHEUS_ADDRESS = "127.0.0.1:2112"
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds
DEFAULT_IDLE_TIMEOUT = 300.0  # seconds
DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
DEFAULT_MAX_HEADER_COUNT = 100
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_ANALYTICS_MEMORY_LIMIT = 1024**3  # DuckDB's own default is 80% of RAM
# Shipped inside the package so a wheel install has it; config/prices.yaml in a checkout links to it.
DEFAULT_PRICES_FILE = Path(__file__).resolve().parents[1] / "prices.yaml"
DEFAULT_HOME = Home(Path("."), "the current directory")  # what load() replaces; for Settings built in code

LAKE_PREFIX = "ducklake:"


@dataclass(frozen=True, slots=True)
class LakeSettings:
    """A DuckLake database: catalog in PostgreSQL, data files in a folder or S3 (addons/store/lake.py)."""

    catalog: str  # ducklake:postgres:<libpq connection string>
    data_path: str  # a folder or s3://bucket/prefix/
    s3_endpoint: str | None = None  # an S3-compatible store; None: AWS

    def __repr__(self) -> str:  # a connection string may hold a password
        return f"LakeSettings(data_path={self.data_path!r}, s3_endpoint={self.s3_endpoint!r})"


@dataclass(frozen=True, slots=True)
class Settings:
    enabled: bool = True
    instances: tuple[Instance, ...] = ()
    retention: timedelta | None = DEFAULT_RETENTION  # None: keep forever
    structured_logging: bool = False
    log_json: str | None = None
    log_human: str | None = None  # neither set: human-readable log to stderr
    db: Path = DEFAULT_DB
    listen_host: str = "127.0.0.1"  # "" = all interfaces
    listen_port: int = 8888
    allow_byok: bool = True
    proxy_allowed_private_cidrs: tuple[IPNetwork, ...] = ()
    prometheus_enable: bool = False
    prometheus_address: str = DEFAULT_PROMETHEUS_ADDRESS
    upstream_connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT  # seconds; None: no limit
    upstream_idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT  # seconds; None: no limit
    circuit_breaker: BreakerSettings | None = None  # None: disabled
    otel: bool = False  # export traces and metrics over OTLP (addons/sinks/otel/)
    otel_propagate_upstream: bool = False
    max_body_size: int = DEFAULT_MAX_BODY_SIZE  # request bodies, bytes
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES  # names + values of all request headers
    analytics_memory_limit: int = DEFAULT_ANALYTICS_MEMORY_LIMIT  # bytes, CLI reads of the database
    analytics_threads: int | None = None  # None: one per CPU
    workers: int = 1  # gateway processes on the listener (addons/app/workers/)
    governance: GovernanceSettings = DEFAULT_GOVERNANCE  # limits and budgets (addons/chain/governance.py)
    config_file: Path | None = None
    home: Home = DEFAULT_HOME  # holds data/ and certs/ (addons/settings/home.py)
    db_origin: str | None = None  # the variable that set `db`; None: the home's default database
    lake: LakeSettings | None = None  # a DuckLake instead of `db` (which then only names local state)
    s3_endpoint: str | None = None  # for a lake's s3:// data path (also `aigw migrate --to`'s)
    prices_file: Path = DEFAULT_PRICES_FILE
    unknown_variables: tuple[str, ...] = ()  # warnings about misspelled CODER_AIBRIDGE_* variables

    def instance(self, name: str) -> Instance | None:
        return next((i for i in self.instances if i.name == name), None)


__all__ = [
    "DEFAULT_ANALYTICS_MEMORY_LIMIT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DB",
    "DEFAULT_HOME",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_HEADER_COUNT",
    "DEFAULT_PRICES_FILE",
    "DEFAULT_PROMETHEUS_ADDRESS",
    "DEFAULT_RETENTION",
    "LAKE_PREFIX",
    "LakeSettings",
    "Settings",
]
