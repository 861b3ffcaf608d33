"""The options table: every gateway setting, declared once, with its name in each source.

- YAML: a snake_case key under the top-level ``aibridge:`` mapping of the file
  given by ``--config FILE`` (or ``CODER_AIBRIDGE_CONFIG``); the YAML schema
  (``addons/settings/yaml_schema.py``) is built from this table;
- environment: ``CODER_AIBRIDGE_*`` (plus ``CODER_LOGGING_*`` and ``CODER_PROMETHEUS_*``);
- flags: ``--aibridge-*`` (plus ``--log-*`` and ``--prometheus-*``), added by
  ``addons/settings/sources.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from addons.settings.config import (
    DEFAULT_DB,
    DEFAULT_LISTEN,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_PROMETHEUS_ADDRESS,
)
from addons.settings.instances import DEFAULT_BASE_URLS


@dataclass(frozen=True)
class Option:
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
OPTIONS = (
    Option(
        "enabled",
        "CODER_AIBRIDGE_ENABLED",
        "--aibridge-enabled",
        "intercept and record AI traffic (default true; false: gateway routes answer 404 "
        "and the proxy tunnels everything)",
        is_bool=True,
    ),
    Option(
        "openai_key",
        "CODER_AIBRIDGE_OPENAI_KEY",
        "--aibridge-openai-key",
        f"key of the legacy 'openai' instance ({_SECRET_NOTE})",
        metavar="SECRET",
    ),
    Option(
        "openai_base_url",
        "CODER_AIBRIDGE_OPENAI_BASE_URL",
        "--aibridge-openai-base-url",
        f"base URL of the legacy 'openai' instance (default {DEFAULT_BASE_URLS['openai']})",
        metavar="URL",
    ),
    Option(
        "anthropic_key",
        "CODER_AIBRIDGE_ANTHROPIC_KEY",
        "--aibridge-anthropic-key",
        f"key of the legacy 'anthropic' instance ({_SECRET_NOTE})",
        metavar="SECRET",
    ),
    Option(
        "anthropic_base_url",
        "CODER_AIBRIDGE_ANTHROPIC_BASE_URL",
        "--aibridge-anthropic-base-url",
        f"base URL of the legacy 'anthropic' instance (default {DEFAULT_BASE_URLS['anthropic']})",
        metavar="URL",
    ),
    Option(
        "bedrock_region",
        "CODER_AIBRIDGE_BEDROCK_REGION",
        "--aibridge-bedrock-region",
        "send the legacy 'anthropic' instance to Amazon Bedrock in this AWS region",
        metavar="REGION",
    ),
    Option(
        "bedrock_base_url",
        "CODER_AIBRIDGE_BEDROCK_BASE_URL",
        "--aibridge-bedrock-base-url",
        "Bedrock runtime URL for the legacy 'anthropic' instance (wins over the region)",
        metavar="URL",
    ),
    Option(
        "bedrock_model",
        "CODER_AIBRIDGE_BEDROCK_MODEL",
        "--aibridge-bedrock-model",
        "Bedrock model id used for requests (required with Bedrock)",
        metavar="MODEL",
    ),
    Option(
        "bedrock_small_fast_model",
        "CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL",
        "--aibridge-bedrock-small-fast-model",
        "Bedrock model id used for 'haiku' requests (required with Bedrock)",
        metavar="MODEL",
    ),
    Option(
        "bedrock_access_key",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY",
        "--aibridge-bedrock-access-key",
        f"AWS access key id (with the secret; neither: AWS default credential chain; {_SECRET_NOTE})",
        metavar="SECRET",
    ),
    Option(
        "bedrock_access_key_secret",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY_SECRET",
        "--aibridge-bedrock-access-key-secret",
        f"AWS secret access key ({_SECRET_NOTE})",
        metavar="SECRET",
    ),
    Option(
        "retention",
        "CODER_AIBRIDGE_RETENTION",
        "--aibridge-retention",
        "delete interceptions older than this, e.g. 90d, 720h, 1h30m (default 60d; 0 keeps forever)",
        metavar="DURATION",
    ),
    Option(
        "structured_logging",
        "CODER_AIBRIDGE_STRUCTURED_LOGGING",
        "--aibridge-structured-logging",
        "log one 'interception log' record per recorded row (default false)",
        is_bool=True,
    ),
    Option("log_json", "CODER_LOGGING_JSON", "--log-json", "write JSON logs to FILE", metavar="FILE"),
    Option(
        "log_human",
        "CODER_LOGGING_HUMAN",
        "--log-human",
        "write human-readable logs to FILE (default: stderr when no log file is set)",
        metavar="FILE",
    ),
    Option(
        "db",
        "CODER_AIBRIDGE_DB",
        "--aibridge-db",
        f"DuckDB database file (default: {DEFAULT_DB} in the home), or a DuckLake shared by replicas: "
        "ducklake:postgres:dbname=aigw host=… user=… (docs/SCALING.md)",
        metavar="FILE",
    ),
    Option(
        "data_path",
        "CODER_AIBRIDGE_DATA_PATH",
        "--aibridge-data-path",
        "where a DuckLake database keeps its data files: a folder or s3://bucket/prefix/",
        metavar="DIR|URL",
    ),
    Option(
        "s3_endpoint",
        "CODER_AIBRIDGE_S3_ENDPOINT",
        "--aibridge-s3-endpoint",
        "an S3-compatible store for --aibridge-data-path (default: AWS S3), e.g. http://minio:9000",
        metavar="URL",
    ),
    Option(
        "home",
        "CODER_AIBRIDGE_HOME",
        "--aibridge-home",
        "the folder holding data/ and certs/ for every command (default: the current directory when it "
        "holds them, else $XDG_STATE_HOME/aigw or ~/.local/state/aigw)",
        metavar="DIR",
    ),
    Option(
        "prices_file",
        "CODER_AIBRIDGE_PRICES_FILE",
        "--aibridge-prices-file",
        "YAML price overrides (default: the prices.yaml shipped with aigw; see config/prices.yaml)",
        metavar="FILE",
    ),
    Option(
        "listen",
        "CODER_AIBRIDGE_LISTEN",
        "--aibridge-listen",
        f"host:port for gateway routes and the proxy (default {DEFAULT_LISTEN})",
        metavar="HOST:PORT",
    ),
    Option(
        "allow_byok",
        "CODER_AIBRIDGE_ALLOW_BYOK",
        "--aibridge-allow-byok",
        "let users bring their own provider credential (default true)",
        is_bool=True,
    ),
    Option(
        "proxy_allowed_private_cidrs",
        "CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS",
        "--aibridge-proxy-allowed-private-cidrs",
        "comma-separated private CIDRs the proxy may connect to (default none)",
        metavar="CIDRS",
        is_list=True,
    ),
    Option(
        "max_body_size",
        "CODER_AIBRIDGE_MAX_BODY_SIZE",
        "--aibridge-max-body-size",
        "largest request body accepted, e.g. 32MiB, 500KiB or bytes (default 32MiB; larger: 413)",
        metavar="SIZE",
    ),
    Option(
        "max_header_count",
        "CODER_AIBRIDGE_MAX_HEADER_COUNT",
        "--aibridge-max-header-count",
        f"most request headers accepted (default {DEFAULT_MAX_HEADER_COUNT}; more: 431)",
        metavar="N",
    ),
    Option(
        "analytics_memory_limit",
        "CODER_AIBRIDGE_ANALYTICS_MEMORY_LIMIT",
        "--aibridge-analytics-memory-limit",
        "DuckDB memory limit of the analysts' CLI commands on the database and of the gateway's own "
        "database (writer and admin queries), e.g. 512MiB (default 1GiB; larger intermediates spill to disk)",
        metavar="SIZE",
    ),
    Option(
        "workers",
        "CODER_AIBRIDGE_WORKERS",
        "--aibridge-workers",
        "gateway processes serving the listener, or auto (one per CPU) (default 1; also aigw serve --workers)",
        metavar="N",
    ),
    Option(
        "analytics_threads",
        "CODER_AIBRIDGE_ANALYTICS_THREADS",
        "--aibridge-analytics-threads",
        "DuckDB threads of the analysts' CLI commands on the database (default: one per CPU)",
        metavar="N",
    ),
    Option(
        "max_header_bytes",
        "CODER_AIBRIDGE_MAX_HEADER_BYTES",
        "--aibridge-max-header-bytes",
        "largest total size of the request headers, e.g. 64KiB (default 64KiB; larger: 431)",
        metavar="SIZE",
    ),
    Option(
        "max_concurrency",
        "CODER_AIBRIDGE_MAX_CONCURRENCY",
        "--aibridge-max-concurrency",
        "intercepted requests in flight per gateway process (default 0: no limit; over it: 503)",
        metavar="N",
    ),
    Option(
        "rate_limit",
        "CODER_AIBRIDGE_RATE_LIMIT",
        "--aibridge-rate-limit",
        "intercepted requests per second per client IP and process (default 0: no limit; over it: 429)",
        metavar="N",
    ),
    Option(
        "default_rpm",
        "CODER_AIBRIDGE_DEFAULT_RPM",
        "--aibridge-default-rpm",
        "requests per minute per user and per key unless set on them (default 0: no limit)",
        metavar="N",
    ),
    Option(
        "default_tpm",
        "CODER_AIBRIDGE_DEFAULT_TPM",
        "--aibridge-default-tpm",
        "input + output tokens per minute per user and per key unless set on them (default 0: no limit)",
        metavar="N",
    ),
    Option(
        "default_max_streams",
        "CODER_AIBRIDGE_DEFAULT_MAX_STREAMS",
        "--aibridge-default-max-streams",
        "requests in flight per user and per key unless set on them (default 0: no limit)",
        metavar="N",
    ),
    Option(
        "budget_policy",
        "CODER_AIBRIDGE_BUDGET_POLICY",
        "--aibridge-budget-policy",
        "a user in several budgeted groups gets the highest or the lowest budget (default highest)",
        metavar="highest|lowest",
    ),
    Option(
        "budget_period",
        "CODER_AIBRIDGE_BUDGET_PERIOD",
        "--aibridge-budget-period",
        "budget period, UTC boundaries (default month)",
        metavar="day|week|month",
    ),
    Option(
        "budget_unpriced",
        "CODER_AIBRIDGE_BUDGET_UNPRICED",
        "--aibridge-budget-unpriced",
        "models without a known price, for users with a budget: allow or deny (default allow)",
        metavar="allow|deny",
    ),
    Option(
        "budget_warn_ratio",
        "CODER_AIBRIDGE_BUDGET_WARN_RATIO",
        "--aibridge-budget-warn-ratio",
        "share of the budget spent from which responses carry x-aigw-budget-warning (default 0.8)",
        metavar="RATIO",
    ),
    Option(
        "prometheus_enable",
        "CODER_PROMETHEUS_ENABLE",
        "--prometheus-enable",
        "serve Prometheus metrics (default false)",
        is_bool=True,
    ),
    Option(
        "prometheus_address",
        "CODER_PROMETHEUS_ADDRESS",
        "--prometheus-address",
        f"host:port of the metrics endpoint (default {DEFAULT_PROMETHEUS_ADDRESS})",
        metavar="HOST:PORT",
    ),
    Option(
        "upstream_connect_timeout",
        "CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT",
        "--aibridge-upstream-connect-timeout",
        "longest TCP+TLS connect to a provider (default 10s; 0: no limit)",
        metavar="DURATION",
    ),
    Option(
        "upstream_idle_timeout",
        "CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT",
        "--aibridge-upstream-idle-timeout",
        "longest a provider may stay silent before the response headers or between two body chunks "
        "(default 300s; 0: no limit)",
        metavar="DURATION",
    ),
    Option(
        "circuit_breaker_enabled",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED",
        "--aibridge-circuit-breaker-enabled",
        "stop sending requests to a provider endpoint and model that keeps failing (default false)",
        is_bool=True,
    ),
    Option(
        "circuit_breaker_failure_threshold",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        "--aibridge-circuit-breaker-failure-threshold",
        "consecutive failures (429, 503, 504, Anthropic 529, timeouts, connection errors) that open the "
        "breaker (default 5)",
        metavar="N",
    ),
    Option(
        "circuit_breaker_interval",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL",
        "--aibridge-circuit-breaker-interval",
        "window in which the failures count while closed (default 10s; 0: never cleared)",
        metavar="DURATION",
    ),
    Option(
        "circuit_breaker_timeout",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT",
        "--aibridge-circuit-breaker-timeout",
        "how long an open breaker rejects requests before letting probes through (default 30s)",
        metavar="DURATION",
    ),
    Option(
        "circuit_breaker_max_requests",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_MAX_REQUESTS",
        "--aibridge-circuit-breaker-max-requests",
        "probe requests let through while half-open; as many successes close it (default 3)",
        metavar="N",
    ),
    Option(
        "otel",
        "CODER_AIBRIDGE_OTEL",
        "--aibridge-otel",
        "export traces and metrics over OTLP/HTTP, set up by the standard OTEL_* variables (default: "
        "on when OTEL_EXPORTER_OTLP_ENDPOINT or a per-signal endpoint is set)",
        is_bool=True,
    ),
    Option(
        "otel_propagate_upstream",
        "CODER_AIBRIDGE_OTEL_PROPAGATE_UPSTREAM",
        "--aibridge-otel-propagate-upstream",
        "send the gateway's own traceparent to the provider (default false)",
        is_bool=True,
    ),
)
OPTION = {o.key: o for o in OPTIONS}

__all__ = ["OPTION", "OPTIONS", "Option"]
