"""Reading the options of ``addons/settings/options.py`` from their three sources.

Flags override environment variables, which override the ``--config`` YAML file
(``CODER_AIBRIDGE_CONFIG``). Each value keeps where it came from, so errors name it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from addons.settings.options import OPTIONS, Option
from addons.settings.provider_sources import ENV_PREFIX
from addons.settings.values import Picked, Value, clean

if TYPE_CHECKING:
    from addons.settings.yaml_schema import _YamlSection

CONFIG_ENV = "CODER_AIBRIDGE_CONFIG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and every ``--aibridge-*`` flag. All default to None so lower sources show through.

    Booleans accept ``--flag`` (true) and ``--flag=true|false``; values are checked by ``loader.load``.
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
    for opt in OPTIONS:
        help_text = f"{opt.help} [env {opt.env}]"
        if opt.is_bool:
            group.add_argument(
                opt.flag, dest=opt.dest, nargs="?", const="true", default=None, metavar="BOOL", help=help_text
            )
        else:
            group.add_argument(opt.flag, dest=opt.dest, default=None, metavar=opt.metavar, help=help_text)


def read_config_file(args: Any, environ: Mapping[str, str]) -> tuple[Path | None, _YamlSection | None]:
    """The ``--config`` (else ``CODER_AIBRIDGE_CONFIG``) file and its ``aibridge:`` section; (None, None): no file."""
    candidates = (("--config", getattr(args, "config", None)), (CONFIG_ENV, environ.get(CONFIG_ENV)))
    for origin, path in candidates:
        if (path := clean(path)) is not None:
            config_file = Path(path).expanduser()
            from addons.settings.yaml_schema import read_yaml  # pydantic and PyYAML only when a file is read

            return config_file, read_yaml(config_file, origin)
    return None, None


def _pick(opt: Option, section: _YamlSection | None, environ: Mapping[str, str], args: Any) -> Value | None:
    """The highest-precedence value of `opt`: flag, then environment, then YAML."""
    if (value := clean(getattr(args, opt.dest, None))) is not None:
        return Value(value, opt.flag)
    if (value := clean(environ.get(opt.env))) is not None:
        return Value(value, opt.env)
    if section is not None and (value := clean(getattr(section, opt.key))) is not None:
        return Value(value, opt.yaml)
    return None


def pick(section: _YamlSection | None, environ: Mapping[str, str], args: Any) -> Picked:
    """Every option's highest-precedence value."""
    return Picked({opt.key: _pick(opt, section, environ, args) for opt in OPTIONS})


def unknown_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """One warning per CODER_AIBRIDGE_* variable no setting reads, with the closest known name:
    a misspelled variable would otherwise be ignored without a word."""
    import difflib

    prefix = "CODER_AIBRIDGE_"
    # Provider variables are checked where they are read (provider_sources.py).
    known = {o.env for o in OPTIONS} | {CONFIG_ENV}
    # Compared without the shared prefix, which would make every name look close.
    suffixes = sorted(k.removeprefix(prefix) for k in known if k.startswith(prefix))
    warnings = []
    for var in sorted(environ):
        if not var.startswith(prefix) or var.startswith(ENV_PREFIX) or var in known:
            continue
        close = difflib.get_close_matches(var.removeprefix(prefix), suffixes, n=1, cutoff=0.6)
        hint = f"did you mean {prefix}{close[0]}?" if close else "see aigw serve --help for the known names"
        warnings.append(f"{var}: unknown variable, ignored ({hint})")
    return tuple(warnings)


__all__ = ["CONFIG_ENV", "add_arguments", "pick", "read_config_file", "unknown_variables"]
