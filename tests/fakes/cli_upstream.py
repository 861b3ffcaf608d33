"""The TLS fake upstream, adjusted for real CLIs reaching it through the gateway's proxy.

On top of `TlsFakeUpstream` (LLM answers, Responses over WebSocket):

- `refuse_websockets`: answer every WebSocket upgrade with that status instead of
  accepting it (426 makes Codex fall back to `POST /v1/responses` at once). The
  attempt is still recorded in `ws_handshakes`.
- `routes`: fixed answers by path (query ignored), tried after queued replies and
  before the default ones; e.g. GitHub's `/copilot_internal/user` for Copilot CLI.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from tests.fakes.tls import TlsFakeUpstream
from tests.fakes.upstream import Reply, Seen, default_reply


class CliFakeUpstream(TlsFakeUpstream):
    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.refuse_websockets: int | None = None
        self.routes: dict[str, Callable[[Seen], Reply]] = {}
        super().__init__(context, host)

    def reset(self) -> None:
        super().reset()
        self.refuse_websockets = None
        self.routes.clear()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base = super()._handler()
        fake = self

        class Handler(base):  # type: ignore[valid-type, misc]
            def websocket(self) -> None:
                status = fake.refuse_websockets
                if status is None:
                    super().websocket()
                    return
                fake.ws_handshakes.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = json.dumps({"error": {"message": "websockets refused by the test",
                                             "type": "invalid_request_error"}})
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())
                self.wfile.flush()

            def handle_any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                fake.requests.append(seen)
                route = fake.routes.get(self.path.partition("?")[0])
                if fake.replies:
                    reply = fake.replies.popleft()
                elif route is not None:
                    reply = route(seen)
                else:
                    reply = default_reply(seen)
                self.send(reply)

        return Handler
