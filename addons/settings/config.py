"""Gateway settings: defaults < YAML file < environment < flags.

Every setting has one name per source:

- YAML: a snake_case key under the top-level ``aibridge:`` mapping of the file
  given by ``--config FILE`` (or ``CODER_AIBRIDGE_CONFIG``);
- environment: ``CODER_AIBRIDGE_*`` (plus ``CODER_LOGGING_*`` and ``CODER_PROMETHEUS_*``);
- flags: ``--aibridge-*`` (plus ``--log-*`` and ``--prometheus-*``).

Each value remembers where it came from, so a bad value fails with a one-line
:class:`ConfigError` that names the variable, flag or YAML path to fix. Secret
values (provider keys, AWS credentials) never appear in messages or reprs.

Provider instances come from three places, in this order:

1. legacy single-provider settings (``CODER_AIBRIDGE_OPENAI_KEY``, ``…_ANTHROPIC_*``,
   ``…_BEDROCK_*``): at most one ``openai`` and one ``anthropic`` instance;
2. indexed environment variables ``CODER_AIBRIDGE_PROVIDER_<N>_<FIELD>``, or, when
   the environment defines none, the YAML ``providers:`` list;
3. when nothing at all is configured: keyless ``openai`` and ``anthropic``
   instances with the default base URLs, so bring-your-own-key works out of the box.

The YAML file is checked with a strict pydantic schema (unknown keys are errors;
``addons/settings/yaml_schema.py``, built from ``_OPTIONS`` and imported only when a file is read);
values from all sources then go through the same small parsers below.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from addons.chain.breaker import BreakerSettings
from addons.chain.limits import DEFAULT_GOVERNANCE, PERIODS, GovernanceSettings, Limits
from addons.settings import home as homes
from addons.settings.durations import parse_duration, parse_seconds
from addons.settings.home import Home
from addons.settings.values import ConfigError

if TYPE_CHECKING:
    from addons.settings.yaml_schema import _YamlSection

__all__ = [
    "CHATGPT_BASE_URL",
    "DEFAULT_BASE_URLS",
    "PROVIDER_TYPES",
    "RESERVED_NAMES",
    "BedrockSettings",
    "Instance",
    "Settings",
    "add_arguments",
    "load",
    "mask_secret",
    "unknown_variables",
]

PROVIDER_TYPES = ("openai", "anthropic", "copilot")
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1/",
    "anthropic": "https://api.anthropic.com/",
    "copilot": "https://api.individual.githubcopilot.com",
}
CHATGPT_BASE_URL = "https://chatgpt.com/backend-api/codex"  # an openai instance named "chatgpt"
RESERVED_NAMES = frozenset({"interceptions", "sessions", "admin", "keys", "query", "proxy", "metrics"})
NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"

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
# Coder's defaults for a Bedrock instance that names no model.
DEFAULT_BEDROCK_MODEL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
DEFAULT_BEDROCK_SMALL_FAST_MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"

_NAME_RE = re.compile(NAME_PATTERN)
_REGION_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_TYPES_TEXT = "openai, anthropic or copilot"


# --------------------------------------------------------------------------- results


def mask_secret(secret: str, lead: int = 4) -> str:
    """A display hint for a secret: at most `lead` leading chars (fewer for short ones) and the length."""
    shown = min(lead, len(secret) // 4)
    return f"{secret[:shown]}…({len(secret)} chars)"


def _mask_url(url: str | None) -> str | None:
    """`url` with any password in its user-info part replaced."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _repr(obj: Any, fields: dict[str, Any]) -> str:
    return f"{type(obj).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


@dataclass(frozen=True, slots=True, repr=False)
class BedrockSettings:
    region: str | None
    base_url: str | None  # normalised: no trailing slash
    model: str
    small_fast_model: str  # used instead of `model` when the requested model name contains "haiku"
    access_key: str | None = None  # None (and no secret): the AWS default credential chain
    access_key_secret: str | None = None

    @property
    def endpoint(self) -> str:
        """Where Bedrock requests go: the base URL when set (it wins), else the regional runtime host."""
        if self.base_url:
            return self.base_url
        return f"https://bedrock-runtime.{self.region}.amazonaws.com"

    def masked(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "base_url": _mask_url(self.base_url),
            "endpoint": _mask_url(self.endpoint),
            "model": self.model,
            "small_fast_model": self.small_fast_model,
            "access_key": mask_secret(self.access_key) if self.access_key else None,
            "access_key_secret": mask_secret(self.access_key_secret, lead=0)
            if self.access_key_secret
            else None,
        }

    def __repr__(self) -> str:  # secrets masked
        return _repr(self, self.masked())


@dataclass(frozen=True, slots=True, repr=False)
class Instance:
    """One configured provider instance, reachable at ``/api/v2/aibridge/<name>/…``."""

    type: str  # openai | anthropic | copilot
    name: str
    keys: tuple[str, ...]  # empty: BYOK only (always so for copilot)
    base_url: str  # normalised: no trailing slash
    dump_dir: Path | None
    bedrock: BedrockSettings | None
    source: str  # legacy | indexed | yaml

    @property
    def key(self) -> str | None:
        return self.keys[0] if self.keys else None

    def masked(self) -> dict[str, Any]:
        """A printable description; secrets appear only as hints (see :func:`mask_secret`)."""
        return {
            "name": self.name,
            "type": self.type,
            "source": self.source,
            "base_url": _mask_url(self.base_url),
            "keys": [mask_secret(k) for k in self.keys],
            "dump_dir": str(self.dump_dir) if self.dump_dir is not None else None,
            "bedrock": self.bedrock.masked() if self.bedrock is not None else None,
        }

    def __repr__(self) -> str:  # secrets masked
        return _repr(self, {**self.masked(), "bedrock": self.bedrock})


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    otel: bool = False  # export traces and metrics over OTLP (addons/sinks/otel.py)
    otel_propagate_upstream: bool = False
    max_body_size: int = DEFAULT_MAX_BODY_SIZE  # request bodies, bytes
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES  # names + values of all request headers
    analytics_memory_limit: int = DEFAULT_ANALYTICS_MEMORY_LIMIT  # bytes, CLI reads of the database
    analytics_threads: int | None = None  # None: one per CPU
    workers: int = 1  # gateway processes on the listener (addons/app/workers.py)
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


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Opt:
    """A setting with one name per source; `key` is also its YAML key under ``aibridge:``."""

    key: str
    env: str
    flag: str
    help: str
    is_bool: bool = False
    metavar: str = "VALUE"
    is_list: bool = False  # YAML takes a list too (or a comma-separated string)

    @property
    def yaml(self) -> str:
        return f"aibridge.{self.key}"

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def name_like(self, origin: str) -> str:
        """This option's name in the same source as `origin` (used to point at a missing value)."""
        if origin.startswith("--"):
            return self.flag
        if origin.startswith("aibridge."):
            return self.yaml
        return self.env


_SECRET_NOTE = "prefer the environment variable: flags are visible in the process list"
_OPTIONS = (
    _Opt(
        "enabled",
        "CODER_AIBRIDGE_ENABLED",
        "--aibridge-enabled",
        "intercept and record AI traffic (default true; false: gateway routes answer 404 "
        "and the proxy tunnels everything)",
        is_bool=True,
    ),
    _Opt(
        "openai_key",
        "CODER_AIBRIDGE_OPENAI_KEY",
        "--aibridge-openai-key",
        f"key of the legacy 'openai' instance ({_SECRET_NOTE})",
        metavar="SECRET",
    ),
    _Opt(
        "openai_base_url",
        "CODER_AIBRIDGE_OPENAI_BASE_URL",
        "--aibridge-openai-base-url",
        f"base URL of the legacy 'openai' instance (default {DEFAULT_BASE_URLS['openai']})",
        metavar="URL",
    ),
    _Opt(
        "anthropic_key",
        "CODER_AIBRIDGE_ANTHROPIC_KEY",
        "--aibridge-anthropic-key",
        f"key of the legacy 'anthropic' instance ({_SECRET_NOTE})",
        metavar="SECRET",
    ),
    _Opt(
        "anthropic_base_url",
        "CODER_AIBRIDGE_ANTHROPIC_BASE_URL",
        "--aibridge-anthropic-base-url",
        f"base URL of the legacy 'anthropic' instance (default {DEFAULT_BASE_URLS['anthropic']})",
        metavar="URL",
    ),
    _Opt(
        "bedrock_region",
        "CODER_AIBRIDGE_BEDROCK_REGION",
        "--aibridge-bedrock-region",
        "send the legacy 'anthropic' instance to Amazon Bedrock in this AWS region",
        metavar="REGION",
    ),
    _Opt(
        "bedrock_base_url",
        "CODER_AIBRIDGE_BEDROCK_BASE_URL",
        "--aibridge-bedrock-base-url",
        "Bedrock runtime URL for the legacy 'anthropic' instance (wins over the region)",
        metavar="URL",
    ),
    _Opt(
        "bedrock_model",
        "CODER_AIBRIDGE_BEDROCK_MODEL",
        "--aibridge-bedrock-model",
        "Bedrock model id used for requests (required with Bedrock)",
        metavar="MODEL",
    ),
    _Opt(
        "bedrock_small_fast_model",
        "CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL",
        "--aibridge-bedrock-small-fast-model",
        "Bedrock model id used for 'haiku' requests (required with Bedrock)",
        metavar="MODEL",
    ),
    _Opt(
        "bedrock_access_key",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY",
        "--aibridge-bedrock-access-key",
        f"AWS access key id (with the secret; neither: AWS default credential chain; {_SECRET_NOTE})",
        metavar="SECRET",
    ),
    _Opt(
        "bedrock_access_key_secret",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY_SECRET",
        "--aibridge-bedrock-access-key-secret",
        f"AWS secret access key ({_SECRET_NOTE})",
        metavar="SECRET",
    ),
    _Opt(
        "retention",
        "CODER_AIBRIDGE_RETENTION",
        "--aibridge-retention",
        "delete interceptions older than this, e.g. 90d, 720h, 1h30m (default 60d; 0 keeps forever)",
        metavar="DURATION",
    ),
    _Opt(
        "structured_logging",
        "CODER_AIBRIDGE_STRUCTURED_LOGGING",
        "--aibridge-structured-logging",
        "log one 'interception log' record per recorded row (default false)",
        is_bool=True,
    ),
    _Opt("log_json", "CODER_LOGGING_JSON", "--log-json", "write JSON logs to FILE", metavar="FILE"),
    _Opt(
        "log_human",
        "CODER_LOGGING_HUMAN",
        "--log-human",
        "write human-readable logs to FILE (default: stderr when no log file is set)",
        metavar="FILE",
    ),
    _Opt(
        "db",
        "CODER_AIBRIDGE_DB",
        "--aibridge-db",
        f"DuckDB database file (default: {DEFAULT_DB} in the home), or a DuckLake shared by replicas: "
        "ducklake:postgres:dbname=aigw host=… user=… (docs/SCALING.md)",
        metavar="FILE",
    ),
    _Opt(
        "data_path",
        "CODER_AIBRIDGE_DATA_PATH",
        "--aibridge-data-path",
        "where a DuckLake database keeps its data files: a folder or s3://bucket/prefix/",
        metavar="DIR|URL",
    ),
    _Opt(
        "s3_endpoint",
        "CODER_AIBRIDGE_S3_ENDPOINT",
        "--aibridge-s3-endpoint",
        "an S3-compatible store for --aibridge-data-path (default: AWS S3), e.g. http://minio:9000",
        metavar="URL",
    ),
    _Opt(
        "home",
        "CODER_AIBRIDGE_HOME",
        "--aibridge-home",
        "the folder holding data/ and certs/ for every command (default: the current directory when it "
        "holds them, else $XDG_STATE_HOME/aigw or ~/.local/state/aigw)",
        metavar="DIR",
    ),
    _Opt(
        "prices_file",
        "CODER_AIBRIDGE_PRICES_FILE",
        "--aibridge-prices-file",
        "YAML price overrides (default: the prices.yaml shipped with aigw; see config/prices.yaml)",
        metavar="FILE",
    ),
    _Opt(
        "listen",
        "CODER_AIBRIDGE_LISTEN",
        "--aibridge-listen",
        f"host:port for gateway routes and the proxy (default {DEFAULT_LISTEN})",
        metavar="HOST:PORT",
    ),
    _Opt(
        "allow_byok",
        "CODER_AIBRIDGE_ALLOW_BYOK",
        "--aibridge-allow-byok",
        "let users bring their own provider credential (default true)",
        is_bool=True,
    ),
    _Opt(
        "proxy_allowed_private_cidrs",
        "CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS",
        "--aibridge-proxy-allowed-private-cidrs",
        "comma-separated private CIDRs the proxy may connect to (default none)",
        metavar="CIDRS",
        is_list=True,
    ),
    _Opt(
        "max_body_size",
        "CODER_AIBRIDGE_MAX_BODY_SIZE",
        "--aibridge-max-body-size",
        "largest request body accepted, e.g. 32MiB, 500KiB or bytes (default 32MiB; larger: 413)",
        metavar="SIZE",
    ),
    _Opt(
        "max_header_count",
        "CODER_AIBRIDGE_MAX_HEADER_COUNT",
        "--aibridge-max-header-count",
        f"most request headers accepted (default {DEFAULT_MAX_HEADER_COUNT}; more: 431)",
        metavar="N",
    ),
    _Opt(
        "analytics_memory_limit",
        "CODER_AIBRIDGE_ANALYTICS_MEMORY_LIMIT",
        "--aibridge-analytics-memory-limit",
        "DuckDB memory limit of the analysts' CLI commands on the database and of the gateway's own "
        "database (writer and admin queries), e.g. 512MiB (default 1GiB; larger intermediates spill to disk)",
        metavar="SIZE",
    ),
    _Opt(
        "workers",
        "CODER_AIBRIDGE_WORKERS",
        "--aibridge-workers",
        "gateway processes serving the listener, or auto (one per CPU) (default 1; also aigw serve --workers)",
        metavar="N",
    ),
    _Opt(
        "analytics_threads",
        "CODER_AIBRIDGE_ANALYTICS_THREADS",
        "--aibridge-analytics-threads",
        "DuckDB threads of the analysts' CLI commands on the database (default: one per CPU)",
        metavar="N",
    ),
    _Opt(
        "max_header_bytes",
        "CODER_AIBRIDGE_MAX_HEADER_BYTES",
        "--aibridge-max-header-bytes",
        "largest total size of the request headers, e.g. 64KiB (default 64KiB; larger: 431)",
        metavar="SIZE",
    ),
    _Opt(
        "max_concurrency",
        "CODER_AIBRIDGE_MAX_CONCURRENCY",
        "--aibridge-max-concurrency",
        "intercepted requests in flight per gateway process (default 0: no limit; over it: 503)",
        metavar="N",
    ),
    _Opt(
        "rate_limit",
        "CODER_AIBRIDGE_RATE_LIMIT",
        "--aibridge-rate-limit",
        "intercepted requests per second per client IP and process (default 0: no limit; over it: 429)",
        metavar="N",
    ),
    _Opt(
        "default_rpm",
        "CODER_AIBRIDGE_DEFAULT_RPM",
        "--aibridge-default-rpm",
        "requests per minute per user and per key unless set on them (default 0: no limit)",
        metavar="N",
    ),
    _Opt(
        "default_tpm",
        "CODER_AIBRIDGE_DEFAULT_TPM",
        "--aibridge-default-tpm",
        "input + output tokens per minute per user and per key unless set on them (default 0: no limit)",
        metavar="N",
    ),
    _Opt(
        "default_max_streams",
        "CODER_AIBRIDGE_DEFAULT_MAX_STREAMS",
        "--aibridge-default-max-streams",
        "requests in flight per user and per key unless set on them (default 0: no limit)",
        metavar="N",
    ),
    _Opt(
        "budget_policy",
        "CODER_AIBRIDGE_BUDGET_POLICY",
        "--aibridge-budget-policy",
        "a user in several budgeted groups gets the highest or the lowest budget (default highest)",
        metavar="highest|lowest",
    ),
    _Opt(
        "budget_period",
        "CODER_AIBRIDGE_BUDGET_PERIOD",
        "--aibridge-budget-period",
        "budget period, UTC boundaries (default month)",
        metavar="day|week|month",
    ),
    _Opt(
        "budget_unpriced",
        "CODER_AIBRIDGE_BUDGET_UNPRICED",
        "--aibridge-budget-unpriced",
        "models without a known price, for users with a budget: allow or deny (default allow)",
        metavar="allow|deny",
    ),
    _Opt(
        "budget_warn_ratio",
        "CODER_AIBRIDGE_BUDGET_WARN_RATIO",
        "--aibridge-budget-warn-ratio",
        "share of the budget spent from which responses carry x-aigw-budget-warning (default 0.8)",
        metavar="RATIO",
    ),
    _Opt(
        "prometheus_enable",
        "CODER_PROMETHEUS_ENABLE",
        "--prometheus-enable",
        "serve Prometheus metrics (default false)",
        is_bool=True,
    ),
    _Opt(
        "prometheus_address",
        "CODER_PROMETHEUS_ADDRESS",
        "--prometheus-address",
        f"host:port of the metrics endpoint (default {DEFAULT_PROMETHEUS_ADDRESS})",
        metavar="HOST:PORT",
    ),
    _Opt(
        "upstream_connect_timeout",
        "CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT",
        "--aibridge-upstream-connect-timeout",
        "longest TCP+TLS connect to a provider (default 10s; 0: no limit)",
        metavar="DURATION",
    ),
    _Opt(
        "upstream_idle_timeout",
        "CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT",
        "--aibridge-upstream-idle-timeout",
        "longest a provider may stay silent before the response headers or between two body chunks "
        "(default 300s; 0: no limit)",
        metavar="DURATION",
    ),
    _Opt(
        "circuit_breaker_enabled",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED",
        "--aibridge-circuit-breaker-enabled",
        "stop sending requests to a provider endpoint and model that keeps failing (default false)",
        is_bool=True,
    ),
    _Opt(
        "circuit_breaker_failure_threshold",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        "--aibridge-circuit-breaker-failure-threshold",
        "consecutive failures (429, 503, 504, Anthropic 529, timeouts, connection errors) that open the "
        "breaker (default 5)",
        metavar="N",
    ),
    _Opt(
        "circuit_breaker_interval",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL",
        "--aibridge-circuit-breaker-interval",
        "window in which the failures count while closed (default 10s; 0: never cleared)",
        metavar="DURATION",
    ),
    _Opt(
        "circuit_breaker_timeout",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT",
        "--aibridge-circuit-breaker-timeout",
        "how long an open breaker rejects requests before letting probes through (default 30s)",
        metavar="DURATION",
    ),
    _Opt(
        "circuit_breaker_max_requests",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_MAX_REQUESTS",
        "--aibridge-circuit-breaker-max-requests",
        "probe requests let through while half-open; as many successes close it (default 3)",
        metavar="N",
    ),
    _Opt(
        "otel",
        "CODER_AIBRIDGE_OTEL",
        "--aibridge-otel",
        "export traces and metrics over OTLP/HTTP, set up by the standard OTEL_* variables (default: "
        "on when OTEL_EXPORTER_OTLP_ENDPOINT or a per-signal endpoint is set)",
        is_bool=True,
    ),
    _Opt(
        "otel_propagate_upstream",
        "CODER_AIBRIDGE_OTEL_PROPAGATE_UPSTREAM",
        "--aibridge-otel-propagate-upstream",
        "send the gateway's own traceparent to the provider (default false)",
        is_bool=True,
    ),
)
_OPT = {o.key: o for o in _OPTIONS}
CONFIG_ENV = "CODER_AIBRIDGE_CONFIG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and every ``--aibridge-*`` flag. All default to None so lower sources show through.

    Booleans accept ``--flag`` (true) and ``--flag=true|false``; values are checked by :func:`load`.
    (``--flag false`` works too, so a positional argument right after a bare boolean flag would be
    taken as its value: use the ``=`` form there.)
    """
    group = parser.add_argument_group("configuration (flags override environment, which overrides --config)")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"YAML file with an 'aibridge:' mapping (env {CONFIG_ENV})",
    )
    for opt in _OPTIONS:
        help_text = f"{opt.help} [env {opt.env}]"
        if opt.is_bool:
            group.add_argument(
                opt.flag, dest=opt.dest, nargs="?", const="true", default=None, metavar="BOOL", help=help_text
            )
        else:
            group.add_argument(opt.flag, dest=opt.dest, default=None, metavar=opt.metavar, help=help_text)


# --------------------------------------------------------------------------- value parsers


@dataclass(frozen=True, slots=True)
class _Value:
    value: Any  # str from env/flags; str, int, bool or list from YAML
    origin: str  # the env var, flag or YAML path it came from


def _clean(value: Any) -> Any:
    """Empty strings and empty lists count as unset."""
    if isinstance(value, str):
        value = value.strip()
    return None if value in ("", None, []) else value


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: invalid boolean {str(value).strip()!r} (expected true or false)")


PROPAGATE_WITHOUT_OTEL = ("--aibridge-otel-propagate-upstream does nothing: OpenTelemetry export is off "
                          "(turn it on with --aibridge-otel or OTEL_EXPORTER_OTLP_ENDPOINT)")
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                   "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")


def _otel_by_environment(environ: Mapping[str, str]) -> bool:
    """OTel's own switches decide when --aibridge-otel is unset: an OTLP endpoint turns it on,
    OTEL_SDK_DISABLED=true keeps it off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in _OTLP_ENDPOINTS)


def _split_list(value: Any) -> list[str]:
    """A YAML list or a comma-separated string, as stripped non-empty strings."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [s for s in (str(item).strip() for item in items) if s]


def _parse_cidrs(value: Any, name: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _split_list(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: invalid CIDR {item!r} (e.g. 10.0.0.0/8 or fd00::/8)") from None
    return tuple(networks)


_SIZE = re.compile(r"(\d+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
              "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def _parse_size(value: Any, name: str) -> int:
    """`32MiB`, `500KiB`, `64k`, `1048576` -> bytes (at least 1)."""
    text = str(value).strip()
    match = _SIZE.fullmatch(text)
    size = int(match[1]) * _SIZE_UNIT[(match[2] or "").lower()] if match else 0
    if size < 1:
        raise ConfigError(f"{name}: invalid size {text!r} (use e.g. 32MiB, 500KiB or a number of bytes)")
    return size


def _parse_count(value: Any, name: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}: invalid count {text!r} (expected a positive integer)")
    return int(text)


def _parse_workers(value: Any, name: str) -> int:
    """A count of processes, or `auto`: one per CPU this process may run on."""
    if str(value).strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return _parse_count(value, name)


_HOSTPORT = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<port6>\d+)|(?P<host>[A-Za-z0-9.-]*):(?P<port>\d+)")


def _parse_hostport(value: Any, name: str) -> tuple[str, int]:
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


def _parse_url(value: Any, name: str) -> str:
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


# --------------------------------------------------------------------------- provider instances

_BEDROCK_FIELDS = ("region", "base_url", "model", "small_fast_model", "access_key", "access_key_secret")

# CODER_AIBRIDGE_PROVIDER_<N>_<FIELD> -> canonical field ("bedrock.x" for Bedrock settings).
_ENV_FIELDS = {
    **{f.upper(): f for f in ("type", "name", "key", "keys", "base_url", "dump_dir")},
    **{f"BEDROCK_{f.upper()}": f"bedrock.{f}" for f in _BEDROCK_FIELDS},
    "BEDROCK_ACCESS_KEYS": "bedrock.access_key",  # alias
    "BEDROCK_ACCESS_KEY_SECRETS": "bedrock.access_key_secret",  # alias
}
_ENV_PREFIX = "CODER_AIBRIDGE_PROVIDER_"
_ENV_VAR = re.compile(r"CODER_AIBRIDGE_PROVIDER_(\d+)_([A-Z0-9_]+)")

# Legacy instance -> {canonical field: option key}.
_LEGACY = {
    "openai": {"key": "openai_key", "base_url": "openai_base_url"},
    "anthropic": {
        "key": "anthropic_key",
        "base_url": "anthropic_base_url",
        **{f"bedrock.{f}": f"bedrock_{f}" for f in _BEDROCK_FIELDS},
    },
}


@dataclass(slots=True)
class _RawProvider:
    """One provider's settings before validation, whatever the source."""

    source: str  # legacy | indexed | yaml
    values: dict[str, _Value]  # canonical field -> value
    name_of: Callable[[str], str]  # canonical field -> the variable that would set it

    def where(self, field_name: str) -> str:
        value = self.values.get(field_name)
        return value.origin if value is not None else self.name_of(field_name)

    def get(self, field_name: str) -> Any:
        value = self.values.get(field_name)
        return None if value is None else value.value


def _legacy_providers(picked: Mapping[str, _Value | None]) -> list[_RawProvider]:
    providers = []
    for type_, fields in _LEGACY.items():
        values = {f: v for f, key in fields.items() if (v := picked[key]) is not None}
        if not values:
            continue
        trigger = next(iter(values.values())).origin
        values = {"type": _Value(type_, trigger), "name": _Value(type_, trigger), **values}

        def name_of(f: str, fields: dict[str, str] = fields, trigger: str = trigger) -> str:
            return _OPT[fields[f]].name_like(trigger) if f in fields else trigger

        providers.append(_RawProvider("legacy", values, name_of))
    return providers


def _env_providers(environ: Mapping[str, str]) -> list[_RawProvider]:
    by_index: dict[int, dict[str, _Value]] = {}
    for var in sorted(environ):
        if not var.startswith(_ENV_PREFIX) or (value := _clean(environ[var])) is None:
            continue
        match = _ENV_VAR.fullmatch(var)
        if match is None or match[1] != str(int(match[1])):
            raise ConfigError(f"{var}: not a provider setting (expected {_ENV_PREFIX}<N>_<FIELD>, N from 0)")
        field_name = _ENV_FIELDS.get(match[2])
        if field_name is None:
            raise ConfigError(
                f"{var}: unknown provider setting {match[2]!r} (expected TYPE, NAME, KEY, KEYS, BASE_URL, "
                "DUMP_DIR or BEDROCK_{REGION,BASE_URL,MODEL,SMALL_FAST_MODEL,ACCESS_KEY,ACCESS_KEY_SECRET})"
            )
        values = by_index.setdefault(int(match[1]), {})
        if (other := values.get(field_name)) is not None:  # singular and plural alias both set
            if other.value != value:
                raise ConfigError(f"{var}: differs from {other.origin} (the two are aliases; set only one)")
            continue
        values[field_name] = _Value(value, var)

    providers = []
    for expected, index in enumerate(sorted(by_index)):
        if index != expected:
            raise ConfigError(
                f"{_ENV_PREFIX}{index}_*: provider indices must be contiguous from 0 "
                f"(nothing is set for {_ENV_PREFIX}{expected}_*)"
            )

        def name_of(f: str, index: int = index) -> str:
            return f"{_ENV_PREFIX}{index}_{f.replace('.', '_').upper()}"

        providers.append(_RawProvider("indexed", by_index[index], name_of))
    return providers


def _yaml_providers(section: _YamlSection | None) -> list[_RawProvider]:
    if section is None:
        return []
    providers = []
    for index, item in enumerate(section.providers or ()):
        prefix = f"aibridge.providers[{index}]"
        raw = item.model_dump(exclude={"bedrock"})
        if item.bedrock is not None:
            raw |= {f"bedrock.{k}": v for k, v in item.bedrock.model_dump().items()}
        values = {k: _Value(c, f"{prefix}.{k}") for k, v in raw.items() if (c := _clean(v)) is not None}
        providers.append(_RawProvider("yaml", values, lambda f, prefix=prefix: f"{prefix}.{f}"))
    return providers


def _merge_keys(*sources: Any) -> tuple[str, ...]:
    keys: dict[str, None] = {}
    for source in sources:
        if source is not None:
            keys.update(dict.fromkeys(_split_list(source)))
    return tuple(keys)


def _text(raw: _RawProvider, field_name: str) -> str | None:
    value = raw.get(field_name)
    return None if value is None else str(value).strip()


def _build_bedrock(raw: _RawProvider) -> BedrockSettings:
    region, base_url = _text(raw, "bedrock.region"), raw.get("bedrock.base_url")
    if region is None and base_url is None:
        raise ConfigError(
            f"{raw.where('bedrock.region')}: Bedrock needs a region or a base URL "
            f"({raw.where('bedrock.base_url')})"
        )
    if region is not None and not _REGION_RE.fullmatch(region):
        raise ConfigError(f"{raw.where('bedrock.region')}: invalid AWS region {region!r} (e.g. us-east-1)")
    if base_url is not None:
        base_url = _parse_url(base_url, raw.where("bedrock.base_url"))
    access_key, secret = _text(raw, "bedrock.access_key"), _text(raw, "bedrock.access_key_secret")
    if (access_key is None) != (secret is None):
        missing, present = (
            ("bedrock.access_key_secret", "bedrock.access_key")
            if secret is None
            else ("bedrock.access_key", "bedrock.access_key_secret")
        )
        raise ConfigError(
            f"{raw.where(missing)}: required when {raw.where(present)} is set "
            "(set both, or neither to use the AWS default credential chain)"
        )
    return BedrockSettings(
        region=region,
        base_url=base_url,
        # Coder's server fills unset models with its defaults, and its setup page's examples rely on it.
        model=_text(raw, "bedrock.model") or DEFAULT_BEDROCK_MODEL,
        small_fast_model=_text(raw, "bedrock.small_fast_model") or DEFAULT_BEDROCK_SMALL_FAST_MODEL,
        access_key=access_key,
        access_key_secret=secret,
    )


def _build_instance(raw: _RawProvider) -> Instance:
    type_text = _text(raw, "type")
    if type_text is None:
        raise ConfigError(f"{raw.where('type')}: required (expected {_TYPES_TEXT})")
    type_ = type_text.lower()
    if type_ not in PROVIDER_TYPES:
        raise ConfigError(
            f"{raw.where('type')}: unknown provider type {type_text!r} (expected {_TYPES_TEXT})"
        )

    name = _text(raw, "name") or type_
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{raw.where('name')}: invalid provider name {name!r} "
            f"(lower-case letters and digits, single hyphens between: {NAME_PATTERN})"
        )
    if name in RESERVED_NAMES:
        raise ConfigError(
            f"{raw.where('name')}: provider name {name!r} is reserved for the gateway's own routes "
            f"({', '.join(sorted(RESERVED_NAMES))})"
        )

    keys = _merge_keys(raw.get("key"), raw.get("keys"))
    if type_ == "copilot" and keys:
        raise ConfigError(
            f"{raw.where('key' if 'key' in raw.values else 'keys')}: copilot providers take no key "
            "(requests always carry the user's own GitHub token)"
        )

    if raw.get("base_url") is not None:
        base_url = _parse_url(raw.get("base_url"), raw.where("base_url"))
    elif type_ == "openai" and name == "chatgpt":
        base_url = CHATGPT_BASE_URL
    else:
        base_url = DEFAULT_BASE_URLS[type_].rstrip("/")

    bedrock = None
    if set_fields := [f"bedrock.{f}" for f in _BEDROCK_FIELDS if f"bedrock.{f}" in raw.values]:
        if type_ != "anthropic":
            raise ConfigError(
                f"{raw.where(set_fields[0])}: Bedrock settings are only allowed on anthropic providers "
                f"(this one is {type_})"
            )
        bedrock = _build_bedrock(raw)

    dump_dir = _text(raw, "dump_dir")
    return Instance(
        type=type_,
        name=name,
        keys=keys,
        base_url=base_url,
        dump_dir=Path(dump_dir).expanduser() if dump_dir else None,
        bedrock=bedrock,
        source=raw.source,
    )


def _build_instances(raws: list[_RawProvider]) -> tuple[Instance, ...]:
    instances: list[Instance] = []
    claimed: dict[str, _RawProvider] = {}  # name -> who has it
    for raw in raws:
        instance = _build_instance(raw)
        owner = claimed.get(instance.name)
        if owner is not None:
            where, name = raw.where("name"), repr(instance.name)
            if "name" not in raw.values:
                name += " (defaulted from the type)"
            if owner.source == "legacy":
                raise ConfigError(
                    f"{where}: provider name {name} conflicts with the legacy {instance.name} provider "
                    f"set by {owner.where('name')}; rename one or drop the legacy setting"
                )
            raise ConfigError(
                f"{where}: duplicate provider name {name}, already used by {owner.where('name')}"
            )
        claimed[instance.name] = raw
        instances.append(instance)
    return tuple(instances)


def _default_instances() -> tuple[Instance, ...]:
    return tuple(
        Instance(
            type=t,
            name=t,
            keys=(),
            base_url=DEFAULT_BASE_URLS[t].rstrip("/"),
            dump_dir=None,
            bedrock=None,
            source="legacy",
        )
        for t in ("openai", "anthropic")
    )


# --------------------------------------------------------------------------- loading


def _pick(opt: _Opt, section: _YamlSection | None, environ: Mapping[str, str], args: Any) -> _Value | None:
    """The highest-precedence value of `opt`: flag, then environment, then YAML."""
    if (value := _clean(getattr(args, opt.dest, None))) is not None:
        return _Value(value, opt.flag)
    if (value := _clean(environ.get(opt.env))) is not None:
        return _Value(value, opt.env)
    if section is not None and (value := _clean(getattr(section, opt.key))) is not None:
        return _Value(value, opt.yaml)
    return None


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve and validate all settings. Raises :class:`ConfigError` on the first problem."""
    environ = os.environ if environ is None else environ

    config_file: Path | None = None
    section: _YamlSection | None = None  # no YAML file
    candidates = (("--config", getattr(args, "config", None)), (CONFIG_ENV, environ.get(CONFIG_ENV)))
    for config_origin, path in candidates:
        if (path := _clean(path)) is not None:
            config_file = Path(path).expanduser()
            from addons.settings.yaml_schema import read_yaml  # pydantic and PyYAML only when a file is read

            section = read_yaml(config_file, config_origin)
            break

    picked = {opt.key: _pick(opt, section, environ, args) for opt in _OPTIONS}

    def value(key: str, parse: Callable[[Any, str], Any], default: Any) -> Any:
        found = picked[key]
        return default if found is None else parse(found.value, found.origin)

    def text(v: Any, _name: str) -> str:
        return str(v)

    def address(v: Any, name: str) -> str:
        _parse_hostport(v, name)  # validate, keep the text
        return str(v).strip()

    listen_host, listen_port = value("listen", _parse_hostport, ("127.0.0.1", 8888))
    prometheus_address = value("prometheus_address", address, DEFAULT_PROMETHEUS_ADDRESS)

    raws = _legacy_providers(picked) + (_env_providers(environ) or _yaml_providers(section))
    instances = _build_instances(raws) or _default_instances()

    home_value = picked["home"]
    home = homes.resolve(home_value and str(home_value.value), home_value.origin if home_value else "", environ)
    db_value = picked["db"]
    lake = _lake(db_value, value)
    prices_file = value("prices_file", _parse_file, DEFAULT_PRICES_FILE)

    return Settings(
        enabled=value("enabled", _parse_bool, True),
        instances=instances,
        retention=value("retention", lambda v, n: parse_duration(str(v), n, "keeps forever"), DEFAULT_RETENTION),
        structured_logging=value("structured_logging", _parse_bool, False),
        log_json=value("log_json", text, None),
        log_human=value("log_human", text, None),
        db=Path(str(db_value.value)).expanduser() if db_value and not lake else home.default_db,
        listen_host=listen_host,
        listen_port=listen_port,
        allow_byok=value("allow_byok", _parse_bool, True),
        proxy_allowed_private_cidrs=value("proxy_allowed_private_cidrs", _parse_cidrs, ()),
        prometheus_enable=value("prometheus_enable", _parse_bool, False),
        prometheus_address=prometheus_address,
        upstream_connect_timeout=value("upstream_connect_timeout", parse_seconds, DEFAULT_CONNECT_TIMEOUT),
        upstream_idle_timeout=value("upstream_idle_timeout", parse_seconds, DEFAULT_IDLE_TIMEOUT),
        circuit_breaker=_circuit_breaker(value),
        otel=value("otel", _parse_bool, _otel_by_environment(environ)),
        otel_propagate_upstream=value("otel_propagate_upstream", _parse_bool, False),
        max_body_size=value("max_body_size", _parse_size, DEFAULT_MAX_BODY_SIZE),
        max_header_count=value("max_header_count", _parse_count, DEFAULT_MAX_HEADER_COUNT),
        analytics_memory_limit=value("analytics_memory_limit", _parse_size, DEFAULT_ANALYTICS_MEMORY_LIMIT),
        analytics_threads=value("analytics_threads", _parse_count, None),
        workers=value("workers", _parse_workers, 1),
        max_header_bytes=value("max_header_bytes", _parse_size, DEFAULT_MAX_HEADER_BYTES),
        governance=_governance(value),
        config_file=config_file,
        home=home,
        db_origin=db_value.origin if db_value and not lake else None,
        lake=lake,
        s3_endpoint=lake.s3_endpoint if lake else value("s3_endpoint", lambda v, _n: str(v).strip(), None),
        prices_file=prices_file,
        unknown_variables=unknown_variables(environ),
    )


def _lake(db_value: _Value | None, value: Callable[[str, Callable[[Any, str], Any], Any], Any]) -> LakeSettings | None:
    """A DuckLake database (`ducklake:postgres:…`) with its data path, or None for a DuckDB file."""
    def text(v: Any, _name: str) -> str:
        return str(v).strip()

    data_path = value("data_path", text, None)
    s3_endpoint = value("s3_endpoint", text, None)
    if db_value is None or not str(db_value.value).startswith(LAKE_PREFIX):
        if data_path is not None:
            raise ConfigError("CODER_AIBRIDGE_DATA_PATH: only for a DuckLake database "
                              f"(CODER_AIBRIDGE_DB={LAKE_PREFIX}postgres:…)")
        return None
    catalog = str(db_value.value).strip()
    if not catalog.startswith(LAKE_PREFIX + "postgres:") or not catalog[len(LAKE_PREFIX + "postgres:"):].strip():
        raise ConfigError(f"{db_value.origin}: a DuckLake catalog must be in PostgreSQL: "
                          f"{LAKE_PREFIX}postgres:dbname=aigw host=… user=…")
    if data_path is None:
        raise ConfigError(f"{db_value.origin} names a DuckLake: set CODER_AIBRIDGE_DATA_PATH "
                          "(--aibridge-data-path) to the folder or s3://bucket/prefix/ for its data files")
    if s3_endpoint is not None and not s3_endpoint.startswith(("http://", "https://")):
        raise ConfigError("CODER_AIBRIDGE_S3_ENDPOINT: must be a URL, e.g. http://minio:9000")
    return LakeSettings(catalog=catalog, data_path=data_path, s3_endpoint=s3_endpoint)


def _circuit_breaker(value: Callable[[str, Callable[[Any, str], Any], Any], Any]) -> BreakerSettings | None:
    """Coder's breaker settings (gobreaker's defaults), or None while it is disabled."""
    if not value("circuit_breaker_enabled", _parse_bool, False):
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
        failure_threshold=value("circuit_breaker_failure_threshold", _parse_count, defaults.failure_threshold),
        interval=value("circuit_breaker_interval", interval, defaults.interval),
        timeout=value("circuit_breaker_timeout", timeout, defaults.timeout),
        max_requests=value("circuit_breaker_max_requests", _parse_count, defaults.max_requests),
    )


def _parse_limit(value: Any, name: str) -> int:
    """A limit: a whole number, 0 meaning no limit."""
    text = str(value).strip()
    if not text.isdigit():
        raise ConfigError(f"{name}: invalid limit {text!r} (expected a whole number; 0: no limit)")
    return int(text)


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(f"{name}: invalid value {str(value)!r} (expected {' or '.join(choices)})")
        return text

    return parse


def _governance(value: Callable[[str, Callable[[Any, str], Any], Any], Any]) -> GovernanceSettings:
    def rate(v: Any, name: str) -> float:
        try:
            parsed = float(str(v).strip())
        except ValueError:
            parsed = -1.0
        if not parsed >= 0 or parsed == float("inf"):
            raise ConfigError(f"{name}: invalid rate {str(v)!r} (expected requests per second; 0: no limit)")
        return parsed

    def ratio(v: Any, name: str) -> float:
        try:
            parsed = float(str(v).strip())
        except ValueError:
            parsed = -1.0
        if not 0 < parsed <= 1:
            raise ConfigError(f"{name}: invalid ratio {str(v)!r} (expected a number above 0, at most 1)")
        return parsed

    def limit(key: str) -> int | None:
        return value(key, _parse_limit, 0) or None

    return GovernanceSettings(
        max_concurrency=value("max_concurrency", _parse_limit, 0),
        rate_limit=value("rate_limit", rate, 0.0),
        defaults=Limits(limit("default_rpm"), limit("default_tpm"), limit("default_max_streams")),
        budget_policy=value("budget_policy", _choice("highest", "lowest"), "highest"),
        budget_period=value("budget_period", _choice(*PERIODS), "month"),
        budget_unpriced=value("budget_unpriced", _choice("allow", "deny"), "allow"),
        budget_warn_ratio=value("budget_warn_ratio", ratio, 0.8),
    )


def _parse_file(value: Any, name: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}: no such file {str(path)!r}")
    return path


# CODER_AIBRIDGE_* variables read outside the options table (none today); provider variables are
# checked by _env_providers.
_OTHER_KNOWN_VARIABLES: frozenset[str] = frozenset()


def unknown_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """One warning per CODER_AIBRIDGE_* variable no setting reads, with the closest known name:
    a misspelled variable would otherwise be ignored without a word."""
    import difflib

    prefix = "CODER_AIBRIDGE_"
    known = {o.env for o in _OPTIONS} | {CONFIG_ENV} | _OTHER_KNOWN_VARIABLES
    # Compared without the shared prefix, which would make every name look close.
    suffixes = sorted(k.removeprefix(prefix) for k in known if k.startswith(prefix))
    warnings = []
    for var in sorted(environ):
        if not var.startswith(prefix) or var.startswith(_ENV_PREFIX) or var in known:
            continue
        close = difflib.get_close_matches(var.removeprefix(prefix), suffixes, n=1, cutoff=0.6)
        hint = f"did you mean {prefix}{close[0]}?" if close else "see aigw serve --help for the known names"
        warnings.append(f"{var}: unknown variable, ignored ({hint})")
    return tuple(warnings)


def __getattr__(name: str) -> Any:
    """The YAML schema's models (`_YamlSection`, …) live in addons.settings.yaml_schema, imported on first use."""
    if name.startswith("_Yaml"):
        from addons.settings import yaml_schema as config_yaml

        return getattr(config_yaml, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
