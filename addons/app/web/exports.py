"""mitmweb's export, save and cut commands, taken over so that they work on redacted copies of the flows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mitmproxy.types
from mitmproxy import command
from mitmproxy import flow as mflow
from mitmproxy.addonmanager import AddonManager

from addons.app.web.redact import redacted_copy


class RedactedExports:
    """Addon (aigw web): mitmweb's export, save and cut commands, fed redacted copies of the flows.

    Added after mitmproxy's built-ins, so these take their command names over; each hands the
    copies to the built-in implementation. Files written and text returned never hold a secret.
    """

    def __init__(self, manager: AddonManager, secrets: frozenset[str]) -> None:
        self.manager = manager  # not `addons`: mitmproxy would take that for this addon's own sub-addons
        self.secrets = secrets

    def copies(self, flows: Sequence[mflow.Flow]) -> list[mflow.Flow]:
        return [redacted_copy(f, self.secrets) for f in flows]

    def builtin(self, name: str) -> Any:
        return self.manager.get(name)

    @command.command("export")
    def export(self, format: str, f: mflow.Flow) -> str:
        """Export a flow (credentials redacted) and return the result."""
        return self.builtin("export").export_str(format, *self.copies([f]))

    @command.command("export.file")
    def export_file(self, format: str, flow: mflow.Flow, path: mitmproxy.types.Path) -> None:
        """Export a flow (credentials redacted) to path."""
        self.builtin("export").file(format, *self.copies([flow]), path)

    @command.command("export.clip")
    def export_clip(self, format: str, f: mflow.Flow) -> None:
        """Export a flow (credentials redacted) to the system clipboard."""
        self.builtin("export").clip(format, *self.copies([f]))

    @command.command("save.file")
    def save_file(self, flows: Sequence[mflow.Flow], path: mitmproxy.types.Path) -> None:
        """Save flows (credentials redacted) to a file; a leading + appends."""
        self.builtin("save").save(self.copies(flows), path)

    @command.command("save.har")
    def save_har(self, flows: Sequence[mflow.Flow], path: mitmproxy.types.Path) -> None:
        """Export flows (credentials redacted) to an HAR file."""
        self.builtin("savehar").export_har(self.copies(flows), path)

    @command.command("cut")
    def cut(self, flows: Sequence[mflow.Flow], cuts: mitmproxy.types.CutSpec) -> mitmproxy.types.Data:
        """Cut data from flows (credentials redacted)."""
        return self.builtin("cut").cut(self.copies(flows), cuts)  # type: ignore[no-any-return]

    @command.command("cut.save")
    def cut_save(self, flows: Sequence[mflow.Flow], cuts: mitmproxy.types.CutSpec,
                 path: mitmproxy.types.Path) -> None:
        """Save cuts of flows (credentials redacted) to a file."""
        self.builtin("cut").save(self.copies(flows), cuts, path)

    @command.command("cut.clip")
    def cut_clip(self, flows: Sequence[mflow.Flow], cuts: mitmproxy.types.CutSpec) -> None:
        """Send cuts of flows (credentials redacted) to the clipboard."""
        self.builtin("cut").clip(self.copies(flows), cuts)
