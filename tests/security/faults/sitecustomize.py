"""Test-only fault injection for tests/security/test_guard_faults.py, loaded through PYTHONPATH by that
test alone (never by the product): with AIGW_FAULT_SWITCH set, every flow hook of every aigw addon
class is wrapped so that it raises when the switch file names it (`Class.hook`); each firing is
appended to `<switch>.fired`, and the wrapped names are written to AIGW_FAULT_HOOKS at start.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
from pathlib import Path
from typing import Any

NOT_FLOW_HOOKS = {"load", "configure", "running", "done", "add_log"}


def _wrap(cls: type, hook: str, switch: Path) -> None:
    original = cls.__dict__[hook]
    label = f"{cls.__name__}.{hook}"

    def trip() -> None:
        try:
            armed = switch.read_text() == label
        except OSError:
            armed = False
        if armed:
            with open(f"{switch}.fired", "a") as f:
                f.write(label + "\n")
            raise RuntimeError(f"injected fault in {label}")

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def wrapper(self: Any, *args: Any) -> Any:
            trip()
            return await original(self, *args)
    else:
        @functools.wraps(original)
        def wrapper(self: Any, *args: Any) -> Any:  # type: ignore[misc]
            trip()
            return original(self, *args)
    setattr(cls, hook, wrapper)


def _install() -> None:
    import mitmproxy.proxy.layers  # noqa: F401 - defines (registers) every hook
    from mitmproxy import hooks
    from mitmproxy.proxy import server_hooks  # noqa: F401

    switch = Path(os.environ["AIGW_FAULT_SWITCH"])
    import addons

    modules = []
    for info in pkgutil.walk_packages(addons.__path__, "addons."):
        if info.name.split(".")[1] not in ("cli", "__main__"):  # the CLI package and `python -m` entry points
            modules.append(importlib.import_module(info.name))
    names = sorted(set(hooks.all_hooks) - NOT_FLOW_HOOKS)
    wrapped = []
    for module in modules:
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for hook in names:
                if callable(cls.__dict__.get(hook)):
                    _wrap(cls, hook, switch)
                    wrapped.append(f"{cls.__name__}.{hook}")
    Path(os.environ["AIGW_FAULT_HOOKS"]).write_text("\n".join(wrapped))


if os.environ.get("AIGW_FAULT_SWITCH"):
    _install()
