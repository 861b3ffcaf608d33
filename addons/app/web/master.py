"""mitmweb's master for `aigw web`: the UI's HTTP handlers swapped for redacting ones, the gateway's own API
kept out of the flow store, commands and options that would steer the gateway refused."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from io import BytesIO
from typing import Any

from mitmproxy import flow as mflow
from mitmproxy import flowfilter, http, options
from mitmproxy import io as mitm_io
from mitmproxy.addons.view import View
from mitmproxy.tools.web import app
from mitmproxy.tools.web.master import WebMaster

from addons.app.web.exports import RedactedExports
from addons.app.web.redact import flow_secrets, redact_flow_json, redact_header_text, redacted_copy, scrub_value
from addons.chain import routing
from addons.settings.instances import RESERVED_NAMES
from addons.sinks import redaction

WEB_COLUMNS = ["tls", "icon", "path", "method", "status", "size", "time", "comment"]


# --------------------------------------------------------------------------- the UI's HTTP handlers


class _Flows(app.Flows):
    def get(self) -> None:
        master: AigwWebMaster = self.master  # type: ignore[assignment]
        self.write([master.flow_json(f) for f in self.view])


class _DumpFlows(app.DumpFlows):
    def get(self) -> None:
        # mitmweb's own handler, serializing redacted copies instead of the live flows.
        master: AigwWebMaster = self.master  # type: ignore[assignment]
        self.set_header("Content-Disposition", "attachment; filename=flows")
        self.set_header("Content-Type", "application/octet-stream")
        try:
            match = flowfilter.parse(self.request.arguments["filter"][0].decode())
        except ValueError:
            raise app.APIError(400, "Invalid filter argument / regex") from None
        except (KeyError, IndexError):
            match = None
        with BytesIO() as bio:
            writer = mitm_io.FlowWriter(bio)
            for f in list(master.view):
                if match is None or match(f):
                    writer.add(redacted_copy(f, master.secrets))
            self.write(bio.getvalue())


class _FlowContent(app.FlowContent):
    def write(self, chunk: Any) -> None:
        # The raw body download: scrub whatever credential value the body might echo.
        if isinstance(chunk, bytes) and self.request.method == "GET":
            master: AigwWebMaster = self.master  # type: ignore[assignment]
            chunk = redaction.scrub_bytes(chunk, flow_secrets(self.flow, master.secrets))
        super().write(chunk)


class _FlowContentView(app.FlowContentView):
    def message_to_json(self, view_name: str, message: Any, flow: Any, max_lines: int | None = None,
                        from_client: bool | None = None, timestamp: float | None = None) -> dict[str, Any]:
        master: AigwWebMaster = self.master  # type: ignore[assignment]
        out = super().message_to_json(view_name, message, flow, max_lines, from_client, timestamp)
        out["text"] = redaction.scrub(out.get("text") or "", flow_secrets(flow, master.secrets))
        return out


# Commands the UI may not run: they change the gateway's configuration, run code, read files as
# flows, or send data the gateway did not route. (Options go through `_Options`.)
REFUSED_COMMANDS = frozenset({
    "set", "options.load", "options.reset", "options.reset.one", "options.save", "script.run",
    "browser.start", "inject.tcp", "inject.udp", "inject.websocket", "replay.server", "replay.server.add",
    "replay.server.file", "replay.client.file", "view.flows.load",
})
# The options the UI may change: how flows are listed, nothing about the traffic.
UI_OPTIONS = frozenset({"view_filter", "view_order", "view_order_reversed", "web_columns", "showhost"})


class _ExecuteCommand(app.ExecuteCommand):
    def post(self, cmd: str) -> None:
        if cmd in REFUSED_COMMANDS:
            self.write({"error": f"aigw web does not run {cmd!r}: the UI observes traffic, it does not "
                                 "configure or steer the gateway"})
            return
        super().post(cmd)

    def write(self, chunk: Any) -> None:
        # Command results (e.g. `export curl @focus`, `cut … request.headers`) can echo any header.
        if isinstance(chunk, dict) and "value" in chunk:
            master: AigwWebMaster = self.master  # type: ignore[assignment]
            chunk = {**chunk, "value": scrub_value(chunk["value"], master.all_secrets())}
            chunk["value"] = redact_header_text(chunk["value"])
        super().write(chunk)


class _Options(app.Options):
    def put(self) -> None:
        refused = sorted(set(self.json) - UI_OPTIONS)
        if refused:
            raise app.APIError(403, f"aigw web does not change {', '.join(refused)}: set options when starting "
                                    f"the gateway (--set); the UI may change {', '.join(sorted(UI_OPTIONS))}")
        super().put()


_OVERRIDES = [
    (r"/flows(?:\.json)?", _Flows),
    (r"/flows/dump", _DumpFlows),
    (r"/flows/(?P<flow_id>[0-9a-f\-]+)/(?P<message>request|response|messages)/content.data", _FlowContent),
    (r"/flows/(?P<flow_id>[0-9a-f\-]+)/(?P<message>request|response|messages)/content/"
     r"(?P<content_view>[0-9a-zA-Z\-\_%]+)(?:\.json)?", _FlowContentView),
    (r"/commands/(?P<cmd>[a-z.]+)", _ExecuteCommand),
    (r"/options(?:\.json)?", _Options),
]


# --------------------------------------------------------------------------- the gateway's own API stays out


def is_own_api(f: mflow.Flow) -> bool:
    """A request to the gateway's own endpoints rather than to a provider instance."""
    if not isinstance(f, http.HTTPFlow) or not routing.is_gateway_request(f):
        return False
    path = f.request.path
    if path == "/healthz" or path.startswith("/healthz?"):
        return True
    parts = routing.split_gateway_path(path)
    return parts is not None and parts[0] in RESERVED_NAMES


class OwnApiHidingView(View):
    """mitmweb's flow store, minus the gateway's own API flows (known from the request line on)."""

    def add(self, flows: Sequence[mflow.Flow]) -> None:
        super().add([f for f in flows if not is_own_api(f)])


# --------------------------------------------------------------------------- master


class AigwWebMaster(WebMaster):
    """mitmweb's master, redacting everything it serializes for the browser."""

    def __init__(self, opts: options.Options, secrets: Iterable[str] = ()) -> None:
        super().__init__(opts, with_termlog=False)
        self.secrets = frozenset(secrets)
        # mitmweb's view, swapped for one that never stores the gateway's own API flows.
        self.addons.remove(self.view)
        self.view = OwnApiHidingView()
        self.view.sig_view_add.connect(self._sig_view_add)
        self.view.sig_view_remove.connect(self._sig_view_remove)
        self.view.sig_view_update.connect(self._sig_view_update)
        self.view.sig_view_refresh.connect(self._sig_view_refresh)
        self.addons.add(self.view, RedactedExports(self.addons, self.secrets))
        # Our handlers are matched before mitmweb's own (tornado tries host rules in order).
        self.app.add_handlers(r".*$", _OVERRIDES)
        opts.update(web_columns=WEB_COLUMNS)

    def flow_json(self, f: mflow.Flow) -> dict[str, Any]:
        return redact_flow_json(app.flow_to_json(f), flow_secrets(f, self.secrets))

    def all_secrets(self) -> set[str]:
        out = set(self.secrets)
        for f in self.view:
            out |= flow_secrets(f)
        return out

    def _broadcast(self, kind: str, f: mflow.Flow) -> None:
        flow_json = self.flow_json(f)
        for conn in list(app.ClientConnection.connections):
            conn._broadcast_flow(kind, f, flow_json)  # type: ignore[arg-type]

    def _sig_view_add(self, flow: mflow.Flow) -> None:
        self._broadcast("flows/add", flow)

    def _sig_view_update(self, flow: mflow.Flow) -> None:
        self._broadcast("flows/update", flow)
