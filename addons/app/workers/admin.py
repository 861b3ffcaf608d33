"""Admin API calls a worker forwards to the primary, where the database and the AdminApi are: the request as
sent over the channel, and the flow the primary's AdminApi answers."""

from __future__ import annotations

import logging
import time
from typing import Any

from mitmproxy import connection, http

from addons.providers.errors import any_error

log = logging.getLogger("aigw.workers")


def forwarded_request(flow: http.HTTPFlow) -> dict[str, Any]:
    """What a worker sends of an admin API request (picklable)."""
    from addons.chain.admin import from_this_machine

    # The peer only says whether the caller is on this machine (the local admin token's rule).
    peer = ("127.0.0.1", 0) if from_this_machine(flow) else ("192.0.2.1", 0)
    return {"method": flow.request.data.method, "path": flow.request.data.path,
            "headers": flow.request.headers.fields, "content": flow.request.content, "peer": peer}


def admin_flow(request: dict[str, Any], port: int) -> http.HTTPFlow:
    """A flow for the primary's AdminApi from a request a worker received (origin form, to the listener)."""
    now = time.time()
    client = connection.Client(peername=tuple(request["peer"]), sockname=("127.0.0.1", port), timestamp_start=now)
    flow = http.HTTPFlow(client, connection.Server(address=None))
    flow.request = http.Request("127.0.0.1", port, request["method"], b"http", b"", request["path"], b"HTTP/1.1",
                                http.Headers(request["headers"]), request["content"], None, now, now)
    return flow


async def answer(admin: Any, request: dict[str, Any], port: int) -> tuple[int, bytes]:
    """The primary's AdminApi's answer (status, body) to a forwarded request."""
    try:
        flow = admin_flow(request, port)
        await admin.request(flow)
        if flow.response is None:
            raise RuntimeError("the admin API did not answer")
        return flow.response.status_code, flow.response.content or b""
    except Exception:
        log.exception("forwarded admin API call failed")
        return 500, any_error("internal error", "api_error")
