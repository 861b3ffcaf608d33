"""The `aigw` command: `main`, the argument parser and its bash completion.

Each command group is a module of this package (serve, keys, governance, query, data, setup) that
registers its subcommands; what they share (failing with one line, JSON output, the way to the data)
is in common.py, text tables in table.py. Modules heavier than the configuration (the gateway's stack,
DuckDB, the stores) are imported inside the commands that use them: `aigw --help` and short commands
start in tens of milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from addons.app import runtime
from addons.cli import data, governance, keys, query, serve, setup
from addons.cli.common import fail
from addons.settings import loader
from addons.settings.config import Settings
from addons.settings.values import ConfigError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        sys.exit(2)
    args.argv = argv
    try:
        settings = loader.load(args)
    except ConfigError as e:
        fail(f"configuration error: {e}")
    if args.func not in (serve.cmd_serve, setup.cmd_config_check):  # the gateway logs them; config check lists them
        for warning in settings.unknown_variables:
            print(f"aigw: warning: {warning}", file=sys.stderr)
    try:
        sys.exit(args.func(args, settings) or 0)
    except (runtime.GatewayApiError, ConfigError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `aigw … | head`: the reader is gone; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


class _VersionAction(argparse.Action):
    """`--version`: the installed version is looked up only when asked (importlib.metadata costs ~40 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        from addons import __version__

        print(f"aigw {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="An AI gateway for coding agents, on mitmproxy.")
    parser.add_argument("--version", action=_VersionAction, help="show program's version number and exit")
    sub = parser.add_subparsers(metavar="COMMAND")
    for group in (serve, keys, governance, query, data, setup):  # the order of `aigw --help`
        group.register(sub)
    p = sub.add_parser("completion", help="print a bash completion script: eval \"$(aigw completion)\" "
                       "(zsh: run `autoload -U +X bashcompinit && bashcompinit` first)")
    p.set_defaults(func=cmd_completion)
    return parser


def cmd_completion(args: argparse.Namespace, settings: Settings) -> int:
    print(bash_completion(build_parser()))
    return 0


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function built from the parser: subcommands, then each one's flags."""
    words: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        subs = next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})
        words[path] = [*subs, *(o for a in p._actions for o in a.option_strings if o.startswith("--"))]
        for name, child in subs.items():
            walk(child, f"{path} {name}".strip())

    walk(parser, "")
    cases = "\n".join(f'    "{path}") words="{" ".join(w)}" ;;' for path, w in words.items())
    return f"""_aigw() {{
  local i cand path="" words paths="|{"|".join(words)}|"
  for ((i = 1; i < COMP_CWORD; i++)); do  # the subcommand path so far (flag values are skipped)
    cand="${{path:+$path }}${{COMP_WORDS[i]}}"
    [[ $paths == *"|$cand|"* ]] && path=$cand
  done
  case "$path" in
{cases}
  esac
  COMPREPLY=($(compgen -W "$words" -- "${{COMP_WORDS[COMP_CWORD]}}"))
}}
complete -o default -F _aigw aigw"""
