"""Provider instances: what one is, the names they may take, and validating one from its raw settings.

Each instance is reachable at ``/api/v2/aibridge/<name>/…``. Its raw settings come
from legacy variables, indexed variables or YAML (``addons/settings/provider_sources.py``);
:func:`build_instances` checks them the same way whatever the source. Secret values never
appear in messages or reprs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addons.settings.masking import mask_secret, mask_url
from addons.settings.values import ConfigError, Value, parse_url, split_list

PROVIDER_TYPES = ("openai", "anthropic", "copilot")
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1/",
    "anthropic": "https://api.anthropic.com/",
    "copilot": "https://api.individual.githubcopilot.com",
}
CHATGPT_BASE_URL = "https://chatgpt.com/backend-api/codex"  # an openai instance named "chatgpt"
# The gateway's own routes under /api/v2/aibridge/: no instance may take these names.
RESERVED_NAMES = frozenset({"interceptions", "sessions", "admin", "keys", "query", "proxy", "metrics"})
NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
# Coder's defaults for a Bedrock instance that names no model.
DEFAULT_BEDROCK_MODEL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
DEFAULT_BEDROCK_SMALL_FAST_MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"

# A provider's settings, in every source (env suffixes, YAML keys); Bedrock's as "bedrock.<field>".
PROVIDER_FIELDS = ("type", "name", "key", "keys", "base_url", "dump_dir")
BEDROCK_FIELDS = ("region", "base_url", "model", "small_fast_model", "access_key", "access_key_secret")

_NAME_RE = re.compile(NAME_PATTERN)
_REGION_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_TYPES_TEXT = "openai, anthropic or copilot"


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
            "base_url": mask_url(self.base_url),
            "endpoint": mask_url(self.endpoint),
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
        """A printable description; secrets appear only as hints (see :func:`~addons.settings.masking.mask_secret`)."""
        return {
            "name": self.name,
            "type": self.type,
            "source": self.source,
            "base_url": mask_url(self.base_url),
            "keys": [mask_secret(k) for k in self.keys],
            "dump_dir": str(self.dump_dir) if self.dump_dir is not None else None,
            "bedrock": self.bedrock.masked() if self.bedrock is not None else None,
        }

    def __repr__(self) -> str:  # secrets masked
        return _repr(self, {**self.masked(), "bedrock": self.bedrock})


@dataclass(slots=True)
class RawProvider:
    """One provider's settings before validation, whatever the source."""

    source: str  # legacy | indexed | yaml
    values: dict[str, Value]  # canonical field -> value
    name_of: Callable[[str], str]  # canonical field -> the variable that would set it

    def where(self, field_name: str) -> str:
        value = self.values.get(field_name)
        return value.origin if value is not None else self.name_of(field_name)

    def get(self, field_name: str) -> Any:
        value = self.values.get(field_name)
        return None if value is None else value.value


def _merge_keys(*sources: Any) -> tuple[str, ...]:
    keys: dict[str, None] = {}
    for source in sources:
        if source is not None:
            keys.update(dict.fromkeys(split_list(source)))
    return tuple(keys)


def _text(raw: RawProvider, field_name: str) -> str | None:
    value = raw.get(field_name)
    return None if value is None else str(value).strip()


def _build_bedrock(raw: RawProvider) -> BedrockSettings:
    region, base_url = _text(raw, "bedrock.region"), raw.get("bedrock.base_url")
    if region is None and base_url is None:
        raise ConfigError(
            f"{raw.where('bedrock.region')}: Bedrock needs a region or a base URL "
            f"({raw.where('bedrock.base_url')})"
        )
    if region is not None and not _REGION_RE.fullmatch(region):
        raise ConfigError(f"{raw.where('bedrock.region')}: invalid AWS region {region!r} (e.g. us-east-1)")
    if base_url is not None:
        base_url = parse_url(base_url, raw.where("bedrock.base_url"))
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


def _type(raw: RawProvider) -> str:
    type_text = _text(raw, "type")
    if type_text is None:
        raise ConfigError(f"{raw.where('type')}: required (expected {_TYPES_TEXT})")
    type_ = type_text.lower()
    if type_ not in PROVIDER_TYPES:
        raise ConfigError(
            f"{raw.where('type')}: unknown provider type {type_text!r} (expected {_TYPES_TEXT})"
        )
    return type_


def _name(raw: RawProvider, type_: str) -> str:
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
    return name


def _build_instance(raw: RawProvider) -> Instance:
    type_ = _type(raw)
    name = _name(raw, type_)
    keys = _merge_keys(raw.get("key"), raw.get("keys"))
    if type_ == "copilot" and keys:
        raise ConfigError(
            f"{raw.where('key' if 'key' in raw.values else 'keys')}: copilot providers take no key "
            "(requests always carry the user's own GitHub token)"
        )

    if raw.get("base_url") is not None:
        base_url = parse_url(raw.get("base_url"), raw.where("base_url"))
    elif type_ == "openai" and name == "chatgpt":
        base_url = CHATGPT_BASE_URL
    else:
        base_url = DEFAULT_BASE_URLS[type_].rstrip("/")

    bedrock = None
    if set_fields := [f"bedrock.{f}" for f in BEDROCK_FIELDS if f"bedrock.{f}" in raw.values]:
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


def build_instances(raws: list[RawProvider]) -> tuple[Instance, ...]:
    instances: list[Instance] = []
    claimed: dict[str, RawProvider] = {}  # name -> who has it
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


def default_instances() -> tuple[Instance, ...]:
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


__all__ = [
    "BEDROCK_FIELDS",
    "CHATGPT_BASE_URL",
    "DEFAULT_BASE_URLS",
    "DEFAULT_BEDROCK_MODEL",
    "DEFAULT_BEDROCK_SMALL_FAST_MODEL",
    "PROVIDER_FIELDS",
    "PROVIDER_TYPES",
    "RESERVED_NAMES",
    "BedrockSettings",
    "Instance",
    "RawProvider",
    "build_instances",
    "default_instances",
]
