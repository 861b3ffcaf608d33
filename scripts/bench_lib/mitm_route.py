"""The minimal routing addon for the plain-mitmproxy baseline (`mitmdump -s mitm_route.py`).

It does only what any gateway on mitmproxy must: send origin-form requests to
`/api/v2/aibridge/<name>/...` to the upstream (BENCH_UPSTREAM=host:port, in the
same `request` hook where aigw rewrites the URL) and stream SSE responses
instead of buffering them. Proxied requests (HTTPS_PROXY) go where the client
asked; no auth, no parsing, no recording.
"""

from __future__ import annotations

import os

from mitmproxy import http

PREFIX = "/api/v2/aibridge/"
UPSTREAM_HOST, _, _port = os.environ.get("BENCH_UPSTREAM", "127.0.0.1:80").rpartition(":")
UPSTREAM_PORT = int(_port)


class Route:
    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        if req.first_line_format != "relative" or not req.path.startswith(PREFIX):
            return
        rest = req.path[len(PREFIX) :]
        req.scheme = "http"
        req.host = UPSTREAM_HOST
        req.port = UPSTREAM_PORT
        req.path = "/" + rest.partition("/")[2]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            flow.response.stream = True


addons = [Route()]
