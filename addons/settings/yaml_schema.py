"""The strict schema of the ``--config`` YAML file, and reading it.

Imported only when a YAML file is actually read: pydantic, PyYAML and building
these models cost ~0.1 s, which every short CLI command would otherwise pay.
The ``aibridge:`` section has one key per option of ``options.OPTIONS`` (plus
``providers``, whose keys are ``instances.PROVIDER_FIELDS`` and ``BEDROCK_FIELDS``),
so each setting is declared once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, create_model

from addons.settings.instances import BEDROCK_FIELDS, PROVIDER_FIELDS
from addons.settings.options import OPTIONS
from addons.settings.values import ConfigError


def _scalar(value: Any) -> Any:
    if isinstance(value, dict | list):
        raise ValueError("expected a single value, not a list or mapping")
    return value


def _scalar_or_list(value: Any) -> Any:
    nested = isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
    if isinstance(value, dict) or nested:
        raise ValueError("expected a list of strings or a comma-separated string")
    return value


_Scalar = Annotated[Any, AfterValidator(_scalar)]
_ScalarOrList = Annotated[Any, AfterValidator(_scalar_or_list)]


class _YamlModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_YamlBedrock = create_model("_YamlBedrock", __base__=_YamlModel, **{f: (_Scalar, None) for f in BEDROCK_FIELDS})

_YamlProvider = create_model(
    "_YamlProvider",
    __base__=_YamlModel,
    **{f: ((_ScalarOrList if f == "keys" else _Scalar), None) for f in PROVIDER_FIELDS},
    bedrock=(_YamlBedrock | None, None),
)


_YamlSection = create_model(
    "_YamlSection",
    __base__=_YamlModel,
    **{o.key: ((_ScalarOrList if o.is_list else _Scalar), None) for o in OPTIONS},
    providers=(list[_YamlProvider] | None, None),
)


class _YamlFile(_YamlModel):
    aibridge: _YamlSection | None = None


def _yaml_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


_PYDANTIC_MESSAGES = {
    "extra_forbidden": "unknown key",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
}


def read_yaml(path: Path, origin: str) -> Any:
    """The file's ``aibridge:`` section (a `_YamlSection`); `origin` names where the path came from."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{origin}: {str(path)!r} is not valid YAML{where}: {problem}") from None
    if document is None:
        return _YamlSection()
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: {str(path)!r} must be a mapping with the top-level key 'aibridge'")
    try:
        parsed = _YamlFile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        message = _PYDANTIC_MESSAGES.get(first["type"], first["msg"].removeprefix("Value error, "))
        raise ConfigError(f"{_yaml_path(first['loc'])}: {message} (in {path})") from None
    return parsed.aibridge or _YamlSection()
