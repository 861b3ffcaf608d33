"""Where provider instances come from, in this order:

1. legacy single-provider settings (``CODER_AIBRIDGE_OPENAI_KEY``, ``…_ANTHROPIC_*``,
   ``…_BEDROCK_*``): at most one ``openai`` and one ``anthropic`` instance;
2. indexed environment variables ``CODER_AIBRIDGE_PROVIDER_<N>_<FIELD>``, or, when
   the environment defines none, the YAML ``providers:`` list;
3. when nothing at all is configured: keyless ``openai`` and ``anthropic``
   instances with the default base URLs, so bring-your-own-key works out of the box.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from addons.settings.instances import (
    BEDROCK_FIELDS,
    PROVIDER_FIELDS,
    Instance,
    RawProvider,
    build_instances,
    default_instances,
)
from addons.settings.options import OPTION
from addons.settings.values import ConfigError, Picked, Value, clean

if TYPE_CHECKING:
    from addons.settings.yaml_schema import _YamlSection

ENV_PREFIX = "CODER_AIBRIDGE_PROVIDER_"
_ENV_VAR = re.compile(r"CODER_AIBRIDGE_PROVIDER_(\d+)_([A-Z0-9_]+)")
# CODER_AIBRIDGE_PROVIDER_<N>_<FIELD> -> canonical field ("bedrock.x" for Bedrock settings).
_ENV_FIELDS = {
    **{f.upper(): f for f in PROVIDER_FIELDS},
    **{f"BEDROCK_{f.upper()}": f"bedrock.{f}" for f in BEDROCK_FIELDS},
    "BEDROCK_ACCESS_KEYS": "bedrock.access_key",  # alias
    "BEDROCK_ACCESS_KEY_SECRETS": "bedrock.access_key_secret",  # alias
}
_ENV_FIELDS_TEXT = (f"{', '.join(f.upper() for f in PROVIDER_FIELDS)} or "
                    f"BEDROCK_{{{','.join(f.upper() for f in BEDROCK_FIELDS)}}}")

# Legacy instance -> {canonical field: option key}.
_LEGACY = {
    "openai": {"key": "openai_key", "base_url": "openai_base_url"},
    "anthropic": {
        "key": "anthropic_key",
        "base_url": "anthropic_base_url",
        **{f"bedrock.{f}": f"bedrock_{f}" for f in BEDROCK_FIELDS},
    },
}


def instances(picked: Picked, environ: Mapping[str, str], section: _YamlSection | None) -> tuple[Instance, ...]:
    """The configured instances (see the module docstring), validated."""
    raws = _legacy_providers(picked) + (_env_providers(environ) or _yaml_providers(section))
    return build_instances(raws) or default_instances()


def _legacy_providers(picked: Picked) -> list[RawProvider]:
    providers = []
    for type_, fields in _LEGACY.items():
        values = {f: v for f, key in fields.items() if (v := picked[key]) is not None}
        if not values:
            continue
        trigger = next(iter(values.values())).origin
        values = {"type": Value(type_, trigger), "name": Value(type_, trigger), **values}

        def name_of(f: str, fields: dict[str, str] = fields, trigger: str = trigger) -> str:
            return OPTION[fields[f]].name_like(trigger) if f in fields else trigger

        providers.append(RawProvider("legacy", values, name_of))
    return providers


def _env_providers(environ: Mapping[str, str]) -> list[RawProvider]:
    by_index: dict[int, dict[str, Value]] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or (value := clean(environ[var])) is None:
            continue
        match = _ENV_VAR.fullmatch(var)
        if match is None or match[1] != str(int(match[1])):
            raise ConfigError(f"{var}: not a provider setting (expected {ENV_PREFIX}<N>_<FIELD>, N from 0)")
        field_name = _ENV_FIELDS.get(match[2])
        if field_name is None:
            raise ConfigError(
                f"{var}: unknown provider setting {match[2]!r} (expected {_ENV_FIELDS_TEXT})"
            )
        values = by_index.setdefault(int(match[1]), {})
        if (other := values.get(field_name)) is not None:  # singular and plural alias both set
            if other.value != value:
                raise ConfigError(f"{var}: differs from {other.origin} (the two are aliases; set only one)")
            continue
        values[field_name] = Value(value, var)

    providers = []
    for expected, index in enumerate(sorted(by_index)):
        if index != expected:
            raise ConfigError(
                f"{ENV_PREFIX}{index}_*: provider indices must be contiguous from 0 "
                f"(nothing is set for {ENV_PREFIX}{expected}_*)"
            )

        def name_of(f: str, index: int = index) -> str:
            return f"{ENV_PREFIX}{index}_{f.replace('.', '_').upper()}"

        providers.append(RawProvider("indexed", by_index[index], name_of))
    return providers


def _yaml_providers(section: _YamlSection | None) -> list[RawProvider]:
    if section is None:
        return []
    providers = []
    for index, item in enumerate(section.providers or ()):
        prefix = f"aibridge.providers[{index}]"
        raw = item.model_dump(exclude={"bedrock"})
        if item.bedrock is not None:
            raw |= {f"bedrock.{k}": v for k, v in item.bedrock.model_dump().items()}
        values = {k: Value(c, f"{prefix}.{k}") for k, v in raw.items() if (c := clean(v)) is not None}
        providers.append(RawProvider("yaml", values, lambda f, prefix=prefix: f"{prefix}.{f}"))
    return providers


__all__ = ["ENV_PREFIX", "instances"]
