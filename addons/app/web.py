"""`aigw web`: the gateway under mitmweb, safe to show to debuggers.

What it adds to mitmweb:

- `AigwWebMaster` — mitmweb's master with everything it sends to the browser
  redacted: the flow list and live updates (`flow_to_json`), the flow dump
  download, body content and content views, and command results. Credential
  headers keep their name and lose their value, credential query parameters
  too; known secret values (the configured provider keys, and whatever
  credential a flow carries) are scrubbed from any text. Only this master is
  patched; `aigw serve` (mitmdump) serializes nothing.
- The gateway's own API (keys, query, admin, interceptions, sessions, health)
  never enters the UI's flow store (`OwnApiHidingView`): its requests carry
  admin keys and its responses new keys and recorded data.
- `RedactedExports` — mitmweb's export, save and cut commands (`export curl`,
  `save.file`, `save.har`, …) work on redacted copies of the flows.
- `WebUi` addon — comments on each flow (user, instance, model, status,
  tokens), a mark on failed interceptions, the flow bound
  (`aigw_web_max_flows`: mitmweb keeps every flow in memory otherwise), and
  once a request has left for upstream, the credential headers in the kept
  flow are replaced by their redacted form, so a replay or edit from the UI
  cannot reuse the organisation's key.
- The UI observes, it does not steer: it may change only how flows are
  listed (`UI_OPTIONS`), refuses commands that configure the gateway, run code
  or send data (`REFUSED_COMMANDS`), and nothing intercepts flows (a held flow
  could be edited to carry the organisation's key elsewhere).
- The UI is protected by mitmweb's `web_password` option (a random token is
  generated and logged when it is unset).
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterable, Sequence
from io import BytesIO
from typing import Any

import mitmproxy.types
from mitmproxy import command, flowfilter, http, options
from mitmproxy import ctx as mitm_ctx
from mitmproxy import flow as mflow
from mitmproxy import io as mitm_io
from mitmproxy.addons.view import View
from mitmproxy.tools.web import app
from mitmproxy.tools.web.master import WebMaster

from addons.chain import routing
from addons.flow.state import FlowContext, FlowStates
from addons.settings.instances import RESERVED_NAMES
from addons.sinks import redaction

log = logging.getLogger("aigw.web")

DEFAULT_MAX_FLOWS = 2000
FAILED_MARK = ":x:"
WEB_COLUMNS = ["tls", "icon", "path", "method", "status", "size", "time", "comment"]


# --------------------------------------------------------------------------- redaction of what the UI sees


def _redact_pairs(pairs: Iterable[Any]) -> tuple[tuple[str, str], ...]:
    return tuple((name, redaction.redact_header_value(name, value)) for name, value in pairs)


def redact_flow_json(data: dict[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Redact a `flow_to_json` result in place (headers, trailers, credentials in the URL)."""
    secrets = tuple(secrets)
    request = data.get("request")
    if isinstance(request, dict) and "headers" in request:  # HTTP (DNS flows have no headers)
        request["headers"] = _redact_pairs(request["headers"])
        if "trailers" in request:
            request["trailers"] = _redact_pairs(request["trailers"])
        if isinstance(request.get("path"), str):
            request["path"] = redaction.scrub(redaction.redact_url(request["path"]), secrets)
    response = data.get("response")
    if isinstance(response, dict) and "headers" in response:
        response["headers"] = _redact_pairs(response["headers"])
        if "trailers" in response:
            response["trailers"] = _redact_pairs(response["trailers"])
    if isinstance(data.get("comment"), str) and secrets:
        data["comment"] = redaction.scrub(data["comment"], secrets)
    return data


# Credential values taken out of kept flows (see WebUi.scrub_sent_request): still scrubbed from bodies.
# Held here, not in flow.metadata, which mitmweb would export with the flow.
_removed: weakref.WeakKeyDictionary[mflow.Flow, frozenset[str]] = weakref.WeakKeyDictionary()


def flow_secrets(f: mflow.Flow, base: Iterable[str] = ()) -> set[str]:
    """Configured secrets plus the credential values this flow carries (or carried)."""
    out = set(base) | _removed.get(f, frozenset())
    if isinstance(f, http.HTTPFlow):
        out |= redaction.credential_values(f.request.headers.items(multi=True))
        out |= {v for name, v in f.request.query.items(multi=True)
                if len(v) >= redaction.MIN_SECRET_LENGTH and redaction.is_sensitive_query_name(name)}
        if f.response is not None:
            out |= redaction.credential_values(f.response.headers.items(multi=True))
    return out


def redact_headers_in_place(headers: http.Headers) -> None:
    for name in {n.lower() for n in headers}:
        if redaction.is_sensitive_header(name):
            values = headers.get_all(name)
            headers.set_all(name, [redaction.redact_header_value(name, v) for v in values])


def redacted_copy(f: mflow.Flow, secrets: Iterable[str]) -> mflow.Flow:
    """A copy of the flow fit for export: credential headers redacted, secrets scrubbed from bodies."""
    secrets = flow_secrets(f, secrets)
    dup = f.copy()
    if isinstance(dup, http.HTTPFlow):
        for message in (dup.request, dup.response):
            if message is None:
                continue
            redact_headers_in_place(message.headers)
            if message.raw_content:
                message.raw_content = redaction.scrub_bytes(message.raw_content, secrets)
        dup.request.url = redaction.redact_url(dup.request.url)
    return dup


def scrub_value(value: Any, secrets: Iterable[str]) -> Any:
    """Scrub secrets from any JSON-like value (command results)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redaction.scrub(value, secrets)
    if isinstance(value, bytes):
        return redaction.scrub_bytes(value, secrets)
    if isinstance(value, list | tuple):
        return [scrub_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v, secrets) for k, v in value.items()}
    return value


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
            chunk["value"] = _redact_header_text(chunk["value"])
        super().write(chunk)


_HEADER_TEXT = re.compile(r"([A-Za-z0-9_-]+):[ \t]*([^\r\n'\"]+)")


def _redact_header_text(value: Any) -> Any:
    """Redact `Name: value` credential headers in exported text (raw HTTP, curl, httpie)."""
    if isinstance(value, list):
        return [_redact_header_text(v) for v in value]
    if not isinstance(value, str) or ":" not in value:
        return value

    def one(m: re.Match[str]) -> str:
        name, val = m.group(1), m.group(2)
        if not redaction.is_sensitive_header(name):
            return m.group(0)
        return m.group(0).replace(val, redaction.redact_header_value(name, val.strip()), 1)

    return _HEADER_TEXT.sub(one, value)


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


# --------------------------------------------------------------------------- exports


class RedactedExports:
    """Addon (aigw web): mitmweb's export, save and cut commands, fed redacted copies of the flows.

    Added after mitmproxy's built-ins, so these take their command names over; each hands the
    copies to the built-in implementation. Files written and text returned never hold a secret.
    """

    def __init__(self, master: AigwWebMaster) -> None:
        self.master = master

    def copies(self, flows: Sequence[mflow.Flow]) -> list[mflow.Flow]:
        return [redacted_copy(f, self.master.secrets) for f in flows]

    def builtin(self, name: str) -> Any:
        return self.master.addons.get(name)

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
        self.addons.add(self.view, RedactedExports(self))
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


# --------------------------------------------------------------------------- addon


def comment_for(flow: http.HTTPFlow, ctx: FlowContext | None) -> str:
    """`alice · anthropic · claude-sonnet-4-5 · completed · in 25 out 12 cache r100 w7`."""
    if ctx is None:
        return ""
    parts = [ctx.identity.user_name, ctx.instance.name]
    interception = ctx.interception
    if interception is None:
        parts.append("passthrough")
        return " · ".join(parts)
    summary = interception.summary
    model = interception.info.model or (summary.model if summary is not None else None)
    parts.append(model or "?")
    status = flow.metadata.get("aigw_status")
    parts.append(str(status) if status else "in flight")
    usage = summary.usage if summary is not None else None
    if usage is not None:
        tokens = f"in {usage.input_tokens} out {usage.output_tokens}"
        if usage.cache_read_input_tokens or usage.cache_write_input_tokens:
            tokens += f" cache r{usage.cache_read_input_tokens} w{usage.cache_write_input_tokens}"
        parts.append(tokens)
    return " · ".join(parts)


class WebUi:
    """Addon (aigw web only): flow comments, failure marks, the flow bound, credential scrubbing."""

    def __init__(self, flows: FlowStates) -> None:
        self.flows = flows

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_web_max_flows", int, DEFAULT_MAX_FLOWS,
                          "aigw web: keep at most this many flows in the UI (oldest finished flows are "
                          "dropped; mitmweb holds every flow in memory). 0: unbounded.")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import exceptions

        if "aigw_web_max_flows" in updated and mitm_ctx.options.aigw_web_max_flows < 0:
            raise exceptions.OptionsError("aigw_web_max_flows must be 0 (unbounded) or positive")
        # A held flow can be edited and resumed after aigw chose its upstream and put the
        # organisation's key in: the UI must not be able to send it elsewhere.
        if "intercept" in updated and mitm_ctx.options.intercept:
            raise exceptions.OptionsError("aigw web does not intercept (hold and edit) flows in flight")

    # -- the bound -----------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.trim()

    def trim(self) -> int:
        limit = mitm_ctx.options.aigw_web_max_flows
        view = getattr(mitm_ctx.master, "view", None)
        if view is None or limit <= 0:
            return 0
        excess = view.store_count() - limit
        if excess <= 0:
            return 0
        victims = []
        store = getattr(view, "_store", None)  # insertion-ordered; resolve() is the public, slower way
        for f in list(store.values()) if store is not None else view.resolve("@all"):  # oldest first
            if len(victims) >= excess:
                break
            if not f.live:  # removing a live flow would kill it
                victims.append(f)
        if victims:
            view.remove(victims)
        return len(victims)

    # -- comments and marks ----------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        self.annotate(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.scrub_sent_request(flow)
        self.annotate(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self.scrub_sent_request(flow)
        self.annotate(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.scrub_sent_request(flow)
        self.annotate(flow)

    def annotate(self, flow: http.HTTPFlow) -> None:
        comment = comment_for(flow, self.flows.get(flow))
        if comment:
            flow.comment = comment
        if flow.metadata.get("aigw_status") == "failed" and not flow.marked:
            flow.marked = FAILED_MARK

    @staticmethod
    def scrub_sent_request(flow: http.HTTPFlow) -> None:
        # The request has gone upstream: the kept copy no longer needs the credential.
        values = redaction.credential_values(flow.request.headers.items(multi=True))
        if values:
            _removed[flow] = _removed.get(flow, frozenset()) | values
            redact_headers_in_place(flow.request.headers)


__all__ = ["DEFAULT_MAX_FLOWS", "AigwWebMaster", "OwnApiHidingView", "RedactedExports", "WebUi", "comment_for",
           "is_own_api", "redact_flow_json", "redacted_copy"]
