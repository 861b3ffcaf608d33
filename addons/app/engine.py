"""The mitmproxy engine under aigw: hooks dispatched from a table, and only the built-in addons in use.

Every hook call of every addon runs under one guard: when one raises on a flow, `Guard.fail`
(addons/chain/guard.py) answers the flow itself instead of letting mitmproxy forward it.

mitmproxy's AddonManager walks the whole addon chain for every event: per top-level addon a
context manager, a recursive generator and a `getattr`, whether or not the addon implements the
hook. With mitmproxy's ~35 built-ins plus aigw's own that was most of the CPU per request in
`scripts/bench` (see BENCHMARKS.md). `HookTable` looks each hook's implementers up once and keeps
mitmproxy's semantics; `AigwMaster` loads every built-in (so each `--set` option stays valid) and,
once the options are final, drops the built-ins none of whose options were set.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, master, options
from mitmproxy import addons as builtin
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    errorcheck,
    keepserving,
    next_layer,
    onboarding,
    proxyserver,
    readfile,
    script,
    tlsconfig,
    upstream_auth,
)

# Built-ins a gateway always needs, whatever the options say.
ENGINE = (
    core.Core,
    block.Block,
    disable_h2c.DisableH2C,
    onboarding.Onboarding,
    proxyserver.Proxyserver,
    script.ScriptLoader,
    dns_resolver.DnsResolver,
    next_layer.NextLayer,
    tlsconfig.TlsConfig,
    upstream_auth.UpstreamAuth,
    keepserving.KeepServing,
    errorcheck.ErrorCheck,
)

type Plan = list[list[Callable[..., Any]]]


class HookTable(addonmanager.AddonManager):
    """mitmproxy's AddonManager with each hook's implementers looked up once per chain change.

    Same semantics as mitmproxy's: chain order; an error in one top-level addon is logged and the
    next one still runs — except that with aigw's guard in the chain an error on a flow is handed to
    it (`_failed`), which answers the flow and may end the event; `AddonHalt` ends the event; async
    hooks are awaited. The table is rebuilt
    after any add, register, remove or option change (scripts load and reorder on those), so an
    addon that grows a hook method at run time is the one case it would miss.
    """

    def __init__(self, master: master.Master) -> None:
        super().__init__(master)
        self._plans: dict[str, Plan] = {}

    def _plan(self, event: hooks.Hook) -> Plan:
        plan = self._plans.get(event.name)
        if plan is None:
            plan = []
            for addon in self.chain:
                try:
                    funcs = [func for _, func in self._iter_hooks(addon, event)]
                except exceptions.AddonManagerError as e:
                    addonmanager.logger.error(f"Addon error: {e}")
                    continue
                if funcs:
                    plan.append(funcs)
            self._plans[event.name] = plan
        return plan

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = event.args()
        await self._run(self._plan(event), args, event.name)
        if isinstance(args[0], flow.Flow):
            update = hooks.UpdateHook([args[0]])
            if plan := self._plan(update):
                await self._run(plan, update.args(), update.name)

    async def trigger_event(self, event: hooks.Hook) -> None:
        await self._run(self._plan(event), event.args(), event.name)

    async def _run(self, plan: Plan, args: list[Any], name: str) -> None:
        for funcs in plan:
            func = None
            try:
                for func in funcs:
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:
                if self._failed(name, args, func, e, "_run"):
                    return

    def trigger(self, event: hooks.Hook) -> None:
        plan = self._plan(event)
        if not plan:
            return
        args = event.args()
        for funcs in plan:
            func = None
            try:
                for func in funcs:
                    if inspect.iscoroutinefunction(func):
                        raise exceptions.AddonManagerError(
                            f"Async handler {event.name} ({func}) cannot be called from sync context"
                        )
                    func(*args)
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:
                if self._failed(event.name, args, func, e, "trigger"):
                    return

    def _failed(self, name: str, args: list[Any], func: Any, exc: Exception, frame: str) -> bool:
        """An addon raised: the guard (addons/chain/guard.py) makes sure its flow goes nowhere, else just log.

        True: the event ends here (no later addon may undo what the guard did to the flow).
        """
        guard = self.lookup.get("aigw_guard")
        if guard is None or not args:
            _log_addon_error(frame)
            return False
        addon = type(getattr(func, "__self__", func)).__name__
        try:
            return bool(guard.fail(args[0], name, addon, exc))
        except Exception:
            _log_addon_error(frame)
            subject = args[0]
            if isinstance(subject, flow.Flow) and subject.killable:
                subject.kill()  # the guard itself failed: at least never forward
            return False

    def _configure_all(self, updated: set[str]) -> None:
        self._plans.clear()
        super()._configure_all(updated)
        self._plans.clear()  # ScriptLoader may have loaded or reordered scripts

    def register(self, addon: Any) -> Any:
        self._plans.clear()
        return super().register(addon)

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._plans.clear()

    def remove(self, addon: Any) -> None:
        super().remove(addon)
        self._plans.clear()

    def clear(self) -> None:
        super().clear()
        self._plans.clear()

    def detach(self, addon: Any) -> None:
        """Take a top-level addon that never ran out of the chain (no `done` hook: nothing to end)."""
        for a in addonmanager.traverse([addon]):
            del self.lookup[addonmanager._get_name(a)]
        self.chain.remove(addon)
        self._plans.clear()


def _log_addon_error(frame: str) -> None:
    etype, value, tb = sys.exc_info()
    assert etype is not None and value is not None
    addonmanager.logger.error(f"Addon error: {value}", exc_info=(etype, value, addonmanager.cut_traceback(tb, frame)))


def use_hook_table(m: master.Master) -> None:
    """Swap a constructed master's AddonManager for a HookTable holding the same chain."""
    old = m.addons
    m.options.changed.disconnect(old._configure_all)
    table = HookTable(m)
    table.chain, table.lookup = old.chain, old.lookup
    m.addons = table


class AigwMaster(master.Master):
    """mitmdump's master for `aigw serve`: no terminal output, hooks from a table, idle built-ins dropped."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts)
        self.addons: HookTable
        use_hook_table(self)
        self._optional: list[tuple[Any, list[str]]] = []
        for addon in [*builtin.default_addons(), readfile.ReadFileStdin(), keepserving.KeepServing(),
                      errorcheck.ErrorCheck()]:
            known = set(opts.keys())
            self.addons.add(addon)
            if not isinstance(addon, ENGINE):
                self._optional.append((addon, sorted(set(opts.keys()) - known)))

    def drop_idle_builtins(self) -> list[str]:
        """Remove the optional built-ins whose options all still have their defaults; call once the
        options are final (after `--set`). Returns the names of the ones kept."""
        kept = []
        for addon, names in self._optional:
            if any(self.options.has_changed(n) for n in names):
                kept.append(addonmanager._get_name(addon))
            else:
                self.addons.detach(addon)
        self._optional = []
        return kept
