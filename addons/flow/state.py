"""Per-flow state shared by the routing, auth and intercept addons."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from mitmproxy import http

from addons.providers.base import Provider, Route

if TYPE_CHECKING:
    from addons.chain.auth import Identity
    from addons.chain.intercept import Interception
    from addons.settings.config import Instance


@dataclass(slots=True)
class FlowContext:
    instance: Instance
    provider: Provider
    route: Route
    api_path: str  # path relative to the instance base URL, without the query
    query: str  # "" or "?…"
    identity: Identity
    byok: bool
    received_at: datetime
    client_credential: str | None = None  # the BYOK credential (never stored; only its hint)
    interception: Interception | None = None
    extra: dict[str, object] = field(default_factory=dict)


# Contexts live as long as their flow; no serialisable state is put on the flow itself.
_contexts: weakref.WeakKeyDictionary[http.HTTPFlow, FlowContext] = weakref.WeakKeyDictionary()


def get(flow: http.HTTPFlow) -> FlowContext | None:
    return _contexts.get(flow)


def attach(flow: http.HTTPFlow, ctx: FlowContext) -> None:
    _contexts[flow] = ctx


# Client connections that opened a CONNECT tunnel.
_tunnels: weakref.WeakSet[object] = weakref.WeakSet()


def mark_tunnel(client_conn: object) -> None:
    _tunnels.add(client_conn)


def is_tunnel(client_conn: object) -> bool:
    return client_conn in _tunnels


# Requests a client sent in absolute form (`GET http://host/path`, i.e. proxied plain
# HTTP). mitmproxy rewrites them to origin form before any hook runs, so
# addons.chain.proxy records them here as they are parsed (see proxy.install_absolute_form_marker).
_absolute_form: weakref.WeakSet[http.Request] = weakref.WeakSet()


def mark_absolute_form(request: http.Request) -> None:
    _absolute_form.add(request)


def unmark_absolute_form(request: http.Request) -> None:
    _absolute_form.discard(request)


def is_absolute_form(request: http.Request) -> bool:
    return request in _absolute_form
