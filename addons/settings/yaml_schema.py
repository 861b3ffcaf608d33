"""The strict schema of the ``--config`` YAML file, and reading it.

Imported only when a YAML file is actually read: pydantic, PyYAML and building
these models cost ~0.1 s, which every short CLI command would otherwise pay.
The ``aibridge:`` section has one key per option of ``config._OPTIONS`` (plus
``providers``), so an option is declared once, in ``addons/settings/config.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, create_model

from addons.settings.config import _OPTIONS
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


class _YamlBedrock(_YamlModel):
    region: _Scalar = None
    base_url: _Scalar = None
    model: _Scalar = None
    small_fast_model: _Scalar = None
    access_key: _Scalar = None
    access_key_secret: _Scalar = None


class _YamlProvider(_YamlModel):
    type: _Scalar = None
    name: _Scalar = None
    key: _Scalar = None
    keys: _ScalarOrList = None
    base_url: _Scalar = None
    dump_dir: _Scalar = None
    bedrock: _YamlBedrock | None = None


_YamlSection = create_model(
    "_YamlSection",
    __base__=_YamlModel,
    **{o.key: ((_ScalarOrList if o.is_list else _Scalar), None) for o in _OPTIONS},
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
