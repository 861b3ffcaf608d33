"""Fail closed: no request leaves the gateway unless aigw decided where it goes.

Two addons, each enough on its own to stop a relay (request bodies are bounded while they arrive,
before any hook, by addons/app/http_layer.py):

- `Guard` (first in the chain) refuses what must never be routed: undecodable
  or oversized header sections, control characters in header values, non-ASCII
  request lines, and paths with dot segments, backslashes or empty segments,
  raw or percent-encoded (so no pass-through prefix can climb to another route).
  It is also the one failure path of the engine (`HookTable`): when any addon
  raises on a flow, `Guard.fail` answers the flow itself, logs the exception
  once with the interception id and ends the interception as failed.
- `DefaultDeny` (last before the dump) refuses every request for which no aigw
  addon called `allow_upstream` — and every request whose target changed since.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy import server_hooks

from addons.chain.proxy_policy import build_host_map, configured_destinations, is_bedrock_runtime_host, normalise_host
from addons.chain.routing import split_gateway_path
from addons.flow.state import PROXIED, TUNNELLED, FlowStates, Target
from addons.providers.bedrock import BEDROCK
from addons.providers.errors import any_error, error_body, json_response
from addons.providers.registry import PROVIDERS
from addons.sinks.redaction import is_sensitive_header

if TYPE_CHECKING:
    from addons.settings.config import Settings

log = logging.getLogger("aigw.guard")

# -- the upstream decision -----------------------------------------------------------------


def _target(flow: http.HTTPFlow) -> Target:
    request = flow.request
    return request.scheme, normalise_host(request.host), request.port


def allow_upstream(flows: FlowStates, flow: http.HTTPFlow) -> None:
    """Record that aigw chose where this request goes: the request's target as it is now."""
    flows.choose_upstream(flow, _target(flow))


def upstream_allowed(flows: FlowStates, flow: http.HTTPFlow) -> bool:
    """Whether an upstream was chosen, and the request still points at it."""
    chosen = flows.chosen_upstream(flow)
    return chosen is not None and chosen == _target(flow)


# -- request checks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    message: str
    error_type: str = "invalid_request_error"


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NAMES = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?::[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
# Control characters other than HTAB; CR, LF and NUL among them.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CTL_TEXT = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")
_REQUEST_TARGET = re.compile(rb"[\x21-\x7e]*")
_PERCENT_U = re.compile(r"%u", re.IGNORECASE)
# Decoding rounds before a path counts as suspiciously nested (`%25252e` is three).
_DECODE_ROUNDS = 4


def header_problem(request: http.Request, max_count: int, max_bytes: int) -> Problem | None:
    """Why a request's header section must be refused (431/400), or None."""
    fields = request.headers.fields
    if len(fields) > max_count:
        return Problem(431, f"too many request headers ({len(fields)}; the limit is {max_count})")
    # One pass over all names and one over all values (joined by characters each check allows): the
    # common, clean request costs a few microseconds; a dirty one is then looked at field by field.
    names = b":".join(name for name, _ in fields)
    values = b"\t".join(value for _, value in fields)
    total = len(names) + len(values) - 2 * (len(fields) - 1) if fields else 0
    if total > max_bytes:
        return Problem(431, f"request headers too large ({total} bytes; the limit is {max_bytes})")
    if _NAMES.fullmatch(names) is None and fields:
        return Problem(400, "a request header name is not a valid HTTP token")
    clean_values = _CTL.search(values) is None
    if clean_values and values.isascii():
        return None
    for name, value in fields:
        if not clean_values and _CTL.search(value) is not None:
            return Problem(400, f"request header {name.decode('ascii')} contains a control character "
                                "(CR, LF, NUL or another)")
        if _PRINTABLE_ASCII.fullmatch(value) is None and is_sensitive_header(name.decode("ascii")):
            return Problem(400, f"credential header {name.decode('ascii')} is not printable ASCII")
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:  # what would be recorded (User-Agent, traceparent, …) must be text
            return Problem(400, f"request header {name.decode('ascii')} is not valid UTF-8")
    return None


def request_line_problem(request: http.Request) -> Problem | None:
    """Non-token methods and request targets with anything but printable ASCII."""
    if _TOKEN.fullmatch(request.data.method) is None:
        return Problem(400, "the request method is not a valid HTTP token")
    if _REQUEST_TARGET.fullmatch(request.data.path) is None or not request.data.authority.isascii():
        return Problem(400, "the request line contains non-ASCII or control characters")
    return None


def _segments_problem(path: str) -> str | None:
    if "\\" in path:
        return "a backslash"
    segments = path.split("/")
    for i, segment in enumerate(segments[1:], 1):
        if segment.partition(";")[0] in (".", ".."):  # `..;` too: some servers drop path parameters
            return "a dot segment"
        if not segment and i < len(segments) - 1:  # a single trailing slash is fine
            return "an empty segment"
    return None


def path_problem(path: str) -> str | None:
    """Why a request path must not be routed, or None.

    Refused, raw or percent-encoded to any depth and in any case: `.` and `..`
    segments, backslashes, empty segments (`//`) and control characters; and
    `%u` escapes and percent-encoded bytes that are not valid UTF-8 (overlong `%c0%ae`). The
    check runs on every decoding of the path (and its NFKC form), so an upstream
    that decodes or normalises differently still cannot resolve it elsewhere.
    """
    target = path.partition("?")[0]
    if not target.startswith("/"):
        return "the request path must start with /"
    if ("%" not in target and "/." not in target and "//" not in target and "\\" not in target
            and target.isascii() and _CTL_TEXT.search(target) is None):
        return None  # nothing to decode and no segment that could be a dot or empty one
    decoded = target
    for _ in range(_DECODE_ROUNDS):
        why = _segments_problem(decoded)
        if why is None and not decoded.isascii():
            why = _segments_problem(unicodedata.normalize("NFKC", decoded))
        if why is None and _CTL_TEXT.search(decoded):
            why = "a control character"
        if why is None and _PERCENT_U.search(decoded):
            why = "a %u escape"  # IIS-style `%u002e`: decoded by some servers, never valid percent-encoding
        if why is not None:
            return f"the request path contains {why}"
        if "%" not in decoded:
            return None
        try:
            # Overlong (`%c0%ae`) or otherwise invalid UTF-8 would decode to U+FFFD here and to `.` elsewhere.
            undone = unquote(decoded, errors="strict")
        except UnicodeDecodeError:
            return "the request path contains percent-encoding that is not valid UTF-8"
        if undone == decoded:
            return None
        decoded = undone
    return "the request path is percent-encoded too many times"


# -- errors in the client's shape ----------------------------------------------------------


class Guard:
    """Addon, first in the chain: request checks, and the engine's fail-closed path."""

    name = "aigw_guard"

    def __init__(self, settings: Settings, flows: FlowStates,
                 on_failure: Callable[[http.HTTPFlow, str], None] | None = None) -> None:
        self.settings = settings
        self.flows = flows
        self.on_failure = on_failure  # ends the flow's interception as failed (Interceptor.fail)
        self.host_map = build_host_map(settings)
        # Responses replaced after a failure in `responseheaders`: their error body, restored in `response`.
        self.replaced: weakref.WeakKeyDictionary[http.HTTPFlow, bytes] = weakref.WeakKeyDictionary()

    # -- hooks -------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        request = flow.request
        problem = (header_problem(request, self.settings.max_header_count, self.settings.max_header_bytes)
                   or request_line_problem(request))
        if problem is None and (why := path_problem(request.path)) is not None:
            problem = Problem(400, why)
        if problem is not None:
            self.refuse(flow, problem)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        problem = (header_problem(flow.request, self.settings.max_header_count, self.settings.max_header_bytes)
                   or request_line_problem(flow.request))
        if problem is not None:
            self.refuse(flow, problem)

    def response(self, flow: http.HTTPFlow) -> None:
        body = self.replaced.pop(flow, None)
        if body is not None and flow.response is not None:
            flow.response.content = body  # a bodiless upstream answer left it empty

    def refuse(self, flow: http.HTTPFlow, problem: Problem) -> None:
        flow.response = self.error_response(flow, problem.status, problem.message, problem.error_type)
        log.info("guard: %d for %s: %s", problem.status, flow.request.method, problem.message)

    def error_response(self, flow: http.HTTPFlow, status: int, message: str, error_type: str) -> http.Response:
        """An error response in the shape the client's SDK expects, as far as the request tells."""
        try:
            provider_type, api = self.shape(flow)
            body = error_body(provider_type, api, message, error_type) if provider_type else \
                any_error(message, error_type)
        except Exception:  # a malformed request must still get an answer
            body = any_error(message, error_type)
        return json_response(status, body, {"connection": "close"} if status >= 500 or status == 431 else None)

    def shape(self, flow: http.HTTPFlow) -> tuple[str | None, Any]:
        ctx = self.flows.get(flow)
        if ctx is not None:
            return ctx.instance.type, ctx.route.api
        request = flow.request
        path = request.path
        proxied = flow.metadata.get(PROXIED)
        tunnelled = proxied == TUNNELLED
        if proxied is not None:
            # Inside a tunnel the CONNECT target counts, whatever the Host header says.
            address = flow.server_conn.address
            host = str(address[0]) if tunnelled and address else request.host
            if is_bedrock_runtime_host(host):
                return BEDROCK.type, None
            match = self.host_map.match(host, path.partition("?")[0])
            if match is None or match.api_path is None:
                return None, None
            route = PROVIDERS[match.instance.type].route(request.method, match.api_path)
            return match.instance.type, route.api if route else None
        parts = split_gateway_path(path)
        instance = self.settings.instance(parts[0]) if parts else None
        if instance is None or parts is None:
            return None, None
        provider = PROVIDERS[instance.type]
        api_path = provider.api_path(parts[1])
        route = provider.route(request.method, api_path) if api_path is not None else None
        return instance.type, route.api if route else None

    # -- the engine's failure path -----------------------------------------------------

    def fail(self, subject: object, hook: str, addon: str, exc: BaseException) -> bool:
        """An addon raised while handling `subject` in `hook`: make sure nothing goes on from here.

        Logged here, once; the engine does not log it again. True: the engine ends the event here, so
        that no later addon re-enables what was stopped (e.g. streams the upstream's body after all).
        """
        if isinstance(subject, server_hooks.ServerConnectionHookData):
            subject.server.error = "the gateway refused this connection after an internal error"
            log.error("%s failed in %s; connection refused", addon, hook, exc_info=exc)
            return True
        if not isinstance(subject, mflow.Flow):
            log.error("%s failed in %s", addon, hook, exc_info=exc)
            return False
        ctx = self.flows.get(subject) if isinstance(subject, http.HTTPFlow) else None
        interception_id = ctx.interception.id if ctx is not None and ctx.interception is not None else None
        log.error("%s failed in %s (interception %s); the gateway answers the flow itself", addon, hook,
                  interception_id or "-", exc_info=exc, extra={"interception_id": interception_id})
        if not isinstance(subject, http.HTTPFlow):
            if subject.killable:
                subject.kill()
            return True
        flow = subject
        undecodable = isinstance(exc, UnicodeError)
        status, error_type, message = (400, "invalid_request_error", "the request could not be decoded") \
            if undecodable else (500, "api_error", "the gateway failed to handle this request")
        if hook in ("requestheaders", "request", "http_connect", "http_connect_upstream"):
            flow.request.stream = False
            flow.response = self.error_response(flow, status, message, error_type)
        elif hook == "responseheaders":
            # Nothing of the upstream's answer reaches the client: its body is read and dropped.
            response = self.error_response(flow, status, message, error_type)
            body = response.content or b""
            response.stream = _Replace(body)
            flow.response = response
            self.replaced[flow] = body
        elif hook == "response" and flow.response is not None and not flow.response.stream:
            flow.response = self.error_response(flow, status, message, error_type)
        elif hook.startswith("websocket_") and flow.websocket is not None:
            if hook == "websocket_message" and flow.websocket.messages:
                flow.websocket.messages[-1].drop()
            if flow.killable:
                flow.kill()
        if self.on_failure is not None:
            try:
                self.on_failure(flow, f"{message} ({type(exc).__name__} in {hook})")
            except Exception:
                log.exception("ending interception %s after a failure failed", interception_id or "-")
        # Before the upstream, later addons only skip an answered flow (and a later recorder, logger
        # or dump still sees it); from `responseheaders` on, one could stream the upstream's body.
        return hook == "responseheaders" or hook.startswith("websocket_")


class _Replace:
    """A response stream that drops the upstream's body and sends `body` instead, at the end."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        return [] if chunk else self.body


# -- default deny --------------------------------------------------------------------------


class DefaultDeny:
    """Addon, last before the dump: a request no aigw addon chose an upstream for is refused."""

    name = "aigw_default_deny"

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.destinations = configured_destinations(guard.settings)

    def permitted(self, flow: http.HTTPFlow) -> bool:
        if not upstream_allowed(self.guard.flows, flow):
            return False
        if self.guard.flows.get(flow) is None:
            return True  # a relay (proxy mode): the client's host, address-checked at dial time
        # Routed to an instance: only where an administrator pointed it, or (Bedrock-native clients with
        # their own signature) the Bedrock runtime host they tunnelled to, on a port the proxy allowed.
        host = normalise_host(flow.request.host)
        return (host, flow.request.port) in self.destinations or is_bedrock_runtime_host(host)

    def deny(self, flow: http.HTTPFlow) -> None:
        message = "refused: the gateway chose no upstream for this request"
        flow.request.stream = False
        flow.response = self.guard.error_response(flow, 403, message, "permission_error")
        log.warning("default deny: %s %s to %s:%s", flow.request.method, flow.request.path.partition("?")[0],
                    flow.request.host, flow.request.port)
        if self.guard.on_failure is not None:
            self.guard.on_failure(flow, message)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and not upstream_allowed(self.guard.flows, flow):
            self.deny(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed request goes upstream right after this hook: decide now.
        if flow.response is None and flow.request.stream and not self.permitted(flow):
            self.deny(flow)
        if flow.response is not None:
            # mitmproxy answers `Expect: 100-continue` right after this hook: a refused request gets its
            # refusal instead (sent at once, see addons/app/http_layer.py), never an invitation to upload.
            flow.request.headers.pop("expect", None)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and not self.permitted(flow):
            self.deny(flow)


__all__ = ["DefaultDeny", "Guard", "Problem", "allow_upstream", "header_problem", "path_problem",
           "request_line_problem", "upstream_allowed"]
