"""The engine under `aigw serve`: HookTable dispatches exactly like mitmproxy's AddonManager, and
AigwMaster drops only the built-ins whose options were left alone."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from mitmproxy import addonmanager, exceptions, master, options
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

from addons.app.engine import ENGINE, AigwMaster, HookTable, use_hook_table


class Part:
    """Records every request/response hook call into a shared journal."""

    def __init__(self, name: str, journal: list[str], children: list[Any] | None = None) -> None:
        self.name = name
        self.journal = journal
        if children is not None:
            self.addons = children

    def request(self, flow: Any) -> None:
        self.journal.append(f"{self.name}.request")


class AsyncPart(Part):
    async def request(self, flow: Any) -> None:  # type: ignore[override]
        self.journal.append(f"{self.name}.request(async)")


class Failing(Part):
    def request(self, flow: Any) -> None:
        self.journal.append(f"{self.name}.request")
        raise RuntimeError("boom")


class Halting(Part):
    def request(self, flow: Any) -> None:
        self.journal.append(f"{self.name}.request")
        raise exceptions.AddonHalt


class ResponseOnly:
    def __init__(self, name: str, journal: list[str]) -> None:
        self.name = name
        self.journal = journal

    def response(self, flow: Any) -> None:
        self.journal.append(f"{self.name}.response")


class Updates:
    name = "updates"

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    def update(self, flows: list[Any]) -> None:
        self.journal.append(f"update({len(flows)})")


def chain(journal: list[str]) -> list[Any]:
    return [
        Part("a", journal),
        ResponseOnly("b", journal),
        Part("c", journal, children=[Part("c1", journal), AsyncPart("c2", journal)]),
        Failing("d", journal, children=[Part("d1", journal)]),  # d1 is skipped: d raised first
        AsyncPart("e", journal),
        Updates(journal),
        Halting("f", journal),
        Part("g", journal),  # never runs: f halted the event
    ]


async def journal_of(manager_cls: type[addonmanager.AddonManager], caplog: pytest.LogCaptureFixture) -> list[str]:
    m = master.Master(options.Options())
    if manager_cls is HookTable:
        use_hook_table(m)
    journal: list[str] = []
    m.addons.add(*chain(journal))
    flow = tflow.tflow(resp=True)
    with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
        await m.addons.handle_lifecycle(HttpRequestHook(flow))
        await m.addons.handle_lifecycle(HttpResponseHook(flow))
    errors = [r.getMessage() for r in caplog.records if r.name == "mitmproxy.addonmanager"]
    caplog.clear()
    return [*journal, *errors]


async def test_hook_table_dispatches_exactly_like_mitmproxy(caplog: pytest.LogCaptureFixture) -> None:
    expected = await journal_of(addonmanager.AddonManager, caplog)
    got = await journal_of(HookTable, caplog)
    assert got == expected
    assert got == [
        "a.request", "c.request", "c1.request", "c2.request(async)", "d.request", "e.request(async)",
        "f.request", "update(1)",
        "b.response", "update(1)",
        "Addon error: boom",
    ]


async def test_hook_table_follows_chain_changes() -> None:
    m = master.Master(options.Options())
    use_hook_table(m)
    assert isinstance(m.addons, HookTable)
    journal: list[str] = []
    first = Part("first", journal)
    m.addons.add(first)
    flow = tflow.tflow()
    await m.addons.trigger_event(HttpRequestHook(flow))
    later = Part("later", journal)
    m.addons.add(later)
    await m.addons.trigger_event(HttpRequestHook(flow))
    m.addons.remove(first)
    await m.addons.trigger_event(HttpRequestHook(flow))
    assert journal == ["first.request", "first.request", "later.request", "later.request"]


async def test_option_changes_still_reach_configure() -> None:
    m = master.Master(options.Options())
    use_hook_table(m)
    seen: list[set[str]] = []

    class Configurable:
        def load(self, loader: Any) -> None:
            loader.add_option("aigw_test_option", int, 1, "test")

        def configure(self, updated: set[str]) -> None:
            seen.append(updated)

    m.addons.add(Configurable())
    m.options.update(aigw_test_option=2)
    assert {"aigw_test_option"} in seen
    # The old manager is disconnected: one configure per change, not two.
    assert sum(1 for u in seen if u == {"aigw_test_option"}) == 1


async def test_idle_builtins_are_dropped_and_set_ones_kept() -> None:
    opts = options.Options()
    m = AigwMaster(opts)
    # Every built-in's options exist, so any `--set` mitmdump accepts is accepted here too.
    opts.set("modify_headers=/~q/X-Aigw-Test/1", "anticache=true")
    kept = m.drop_idle_builtins()
    assert sorted(kept) == ["anticache", "modifyheaders"]
    names = {addonmanager._get_name(a) for a in m.addons.chain}
    assert {"modifyheaders", "anticache", "proxyserver", "nextlayer", "tlsconfig", "core", "onboarding"} <= names
    assert not names & {"save", "savehar", "mapremote", "maplocal", "stickycookie", "serverplayback", "proxyauth"}
    assert all(isinstance(a, ENGINE) or addonmanager._get_name(a) in kept for a in m.addons.chain)
    assert "save_stream_file" in opts  # the option of a dropped addon stays declared
    with pytest.raises(exceptions.OptionsError):
        opts.set("no_such_option=1")
