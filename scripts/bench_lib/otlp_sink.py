"""A do-nothing OTLP/HTTP collector for `scripts/bench --otel`: answers every export at once and counts it.

It runs on threads of the bench process (not on the measured system's CPU budget, but on the
same machine, like the upstream). Spans are counted by decoding the protobuf request.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class OtlpSink:
    def __init__(self) -> None:
        self.exports: dict[str, int] = {}
        self.bytes = 0
        self.spans = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> OtlpSink:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"exports": dict(self.exports), "bytes": self.bytes, "spans": self.spans}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                spans = 0
                if self.path == "/v1/traces" and not self.headers.get("content-encoding"):
                    request = ExportTraceServiceRequest.FromString(body)
                    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                with sink.lock:
                    sink.exports[self.path] = sink.exports.get(self.path, 0) + 1
                    sink.bytes += len(body)
                    sink.spans += spans
                # An empty Export*ServiceResponse serialises to no bytes.
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        return Handler
