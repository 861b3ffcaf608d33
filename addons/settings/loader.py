"""Loading the settings: defaults < YAML file < environment < flags.

The YAML file is checked with a strict pydantic schema (unknown keys are errors;
``addons/settings/yaml_schema.py``, imported only when a file is read); values
from all sources then go through the same small parsers (``addons/settings/values.py``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from addons.settings import home as homes
from addons.settings import policies, provider_sources, sources
from addons.settings.config import (
    DEFAULT_ANALYTICS_MEMORY_LIMIT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_PRICES_FILE,
    DEFAULT_PROMETHEUS_ADDRESS,
    DEFAULT_RETENTION,
    LAKE_PREFIX,
    LakeSettings,
    Settings,
)
from addons.settings.durations import parse_duration, parse_seconds
from addons.settings.values import (
    ConfigError,
    Picked,
    parse_address,
    parse_bool,
    parse_cidrs,
    parse_count,
    parse_file,
    parse_hostport,
    parse_size,
    parse_text,
    parse_workers,
)

PROPAGATE_WITHOUT_OTEL = ("--aibridge-otel-propagate-upstream does nothing: OpenTelemetry export is off "
                          "(turn it on with --aibridge-otel or OTEL_EXPORTER_OTLP_ENDPOINT)")
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                   "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve and validate all settings. Raises :class:`ConfigError` on the first problem."""
    environ = os.environ if environ is None else environ
    config_file, section = sources.read_config_file(args, environ)
    picked = sources.pick(section, environ, args)
    # The order problems are reported in, when several values are bad.
    listen_host, listen_port = picked.parsed("listen", parse_hostport, ("127.0.0.1", 8888))
    prometheus_address = picked.parsed("prometheus_address", parse_address, DEFAULT_PROMETHEUS_ADDRESS)
    instances = provider_sources.instances(picked, environ, section)
    home_value, db_value = picked["home"], picked["db"]
    home = homes.resolve(home_value and str(home_value.value), home_value.origin if home_value else "", environ)
    lake = _lake(picked)
    prices_file = picked.parsed("prices_file", parse_file, DEFAULT_PRICES_FILE)

    return Settings(
        enabled=picked.parsed("enabled", parse_bool, True),
        instances=instances,
        retention=picked.parsed("retention", lambda v, n: parse_duration(str(v), n, "keeps forever"),
                                DEFAULT_RETENTION),
        structured_logging=picked.parsed("structured_logging", parse_bool, False),
        log_json=picked.parsed("log_json", parse_text, None),
        log_human=picked.parsed("log_human", parse_text, None),
        db=Path(str(db_value.value)).expanduser() if db_value and not lake else home.default_db,
        listen_host=listen_host,
        listen_port=listen_port,
        allow_byok=picked.parsed("allow_byok", parse_bool, True),
        proxy_allowed_private_cidrs=picked.parsed("proxy_allowed_private_cidrs", parse_cidrs, ()),
        prometheus_enable=picked.parsed("prometheus_enable", parse_bool, False),
        prometheus_address=prometheus_address,
        upstream_connect_timeout=picked.parsed("upstream_connect_timeout", parse_seconds, DEFAULT_CONNECT_TIMEOUT),
        upstream_idle_timeout=picked.parsed("upstream_idle_timeout", parse_seconds, DEFAULT_IDLE_TIMEOUT),
        circuit_breaker=policies.circuit_breaker(picked),
        otel=picked.parsed("otel", parse_bool, _otel_by_environment(environ)),
        otel_propagate_upstream=picked.parsed("otel_propagate_upstream", parse_bool, False),
        max_body_size=picked.parsed("max_body_size", parse_size, DEFAULT_MAX_BODY_SIZE),
        max_header_count=picked.parsed("max_header_count", parse_count, DEFAULT_MAX_HEADER_COUNT),
        analytics_memory_limit=picked.parsed("analytics_memory_limit", parse_size, DEFAULT_ANALYTICS_MEMORY_LIMIT),
        analytics_threads=picked.parsed("analytics_threads", parse_count, None),
        workers=picked.parsed("workers", parse_workers, 1),
        max_header_bytes=picked.parsed("max_header_bytes", parse_size, DEFAULT_MAX_HEADER_BYTES),
        governance=policies.governance(picked),
        config_file=config_file,
        home=home,
        db_origin=db_value.origin if db_value and not lake else None,
        lake=lake,
        s3_endpoint=lake.s3_endpoint if lake else picked.parsed("s3_endpoint", parse_text, None),
        prices_file=prices_file,
        unknown_variables=sources.unknown_variables(environ),
    )


def _lake(picked: Picked) -> LakeSettings | None:
    """A DuckLake database (`ducklake:postgres:…`) with its data path, or None for a DuckDB file."""
    db_value = picked["db"]
    data_path = picked.parsed("data_path", parse_text, None)
    s3_endpoint = picked.parsed("s3_endpoint", parse_text, None)
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


def _otel_by_environment(environ: Mapping[str, str]) -> bool:
    """OTel's own switches decide when --aibridge-otel is unset: an OTLP endpoint turns it on,
    OTEL_SDK_DISABLED=true keeps it off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in _OTLP_ENDPOINTS)


__all__ = ["PROPAGATE_WITHOUT_OTEL", "load"]
