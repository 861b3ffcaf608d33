"""The `aigw web` addon: a comment and a failure mark on each flow, the bound on kept flows, and sent
requests' credentials taken out of the flows the UI keeps."""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx as mitm_ctx
from mitmproxy import http

from addons.app.web.redact import redact_headers_in_place, remember_removed
from addons.flow.state import FlowContext, FlowStates
from addons.sinks import redaction

DEFAULT_MAX_FLOWS = 2000
FAILED_MARK = ":x:"


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
            remember_removed(flow, values)
            redact_headers_in_place(flow.request.headers)
