"""A local fake Amazon Bedrock runtime that checks SigV4 signatures like AWS does.

    fake = FakeBedrock("AKIDFAKE", "secret", "us-east-1")
    base_url = fake.start()            # http://127.0.0.1:<port>
    fake.enqueue(Reply.events([chunk_frame(...), 0.05, exception_frame(...)]))
    ...
    fake.requests                      # what it received (with the signature verdict)
    fake.stop()

Routes: POST /model/{id}/invoke, /invoke-with-response-stream, /converse,
/converse-stream, /count-tokens. Every request's signature is recomputed with botocore from
the fake's own credentials; a mismatch (or a missing/unknown/expired one) is
answered 403 with an AWS-style body and `x-amzn-ErrorType`, before any
scripted reply is used. Without a queued reply each route answers a small
canned success (an Anthropic message, its event stream, or Converse output).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from tests.eventstream_encoder import chunk_frame, converse_frame
from tests.fakes.server import LoopbackServer, QuietHandler

SIGNING_NAME = "bedrock"
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)  # AWS rejects signatures older/newer than this

_ROUTE = re.compile(
    r"/model/(?P<model>[^/]+)/(?P<op>invoke|invoke-with-response-stream|converse|converse-stream|count-tokens)"
)
COUNT_TOKENS = 42  # the canned CountTokens answer
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)

# ---------------------------------------------------------------------------
# Replies


@dataclass
class Reply:
    """One scripted answer.

    `parts` are written one by one, each as its own HTTP chunk and flushed;
    a float in `parts` is a pause in seconds. `abort` closes the connection
    without the final empty chunk (a body cut at the HTTP level); to cut a
    stream mid-frame, put a prefix of a frame last in `parts`.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    parts: list[bytes | float] = field(default_factory=list)
    abort: bool = False

    @classmethod
    def json(cls, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(status, {"content-type": "application/json", **(headers or {})}, [orjson.dumps(body)])

    @classmethod
    def events(cls, parts: list[bytes | float], *, split: int | None = None, abort: bool = False) -> Reply:
        """An event-stream body; `split` re-chunks every frame into pieces of that many bytes."""
        if split:
            parts = [p[i : i + split] if isinstance(p, bytes) else p for p in parts for i in _offsets(p, split)]
        headers = {
            "content-type": "application/vnd.amazon.eventstream",
            "x-amzn-bedrock-content-type": "application/json",
        }
        return cls(200, headers, parts, abort)

    @classmethod
    def aws_error(cls, status: int, error_type: str, message: str, *, retry_after: int | None = None) -> Reply:
        """An AWS JSON error, e.g. aws_error(400, "ValidationException", "...")."""
        headers = {
            "x-amzn-errortype": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        }
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        return cls.json({"message": message}, status, headers)


def _offsets(part: bytes | float, size: int) -> range:
    return range(0, len(part), size) if isinstance(part, bytes) else range(1)


@dataclass
class Received:
    method: str
    path: str  # raw request target, as sent (model id still percent-encoded)
    model_id: str | None  # unquoted
    operation: str | None  # invoke | invoke-with-response-stream | converse | converse-stream | count-tokens
    headers: dict[str, str]  # lower-cased names
    body: bytes
    auth_error: str | None  # None: signature verified

    def json(self) -> Any:
        return orjson.loads(self.body)


# ---------------------------------------------------------------------------
# SigV4 verification


@dataclass(frozen=True)
class AuthFailure:
    error_type: str
    message: str


INVALID_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)


def verify_sigv4(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: ReadOnlyCredentials,
    region: str,
    service: str = SIGNING_NAME,
    now: dt.datetime | None = None,
) -> AuthFailure | None:
    """Recompute the request's SigV4 signature with botocore; None when it is valid.

    `headers` must have lower-case names; `url` is scheme://<Host header><raw path>.
    """
    auth = headers.get("authorization")
    if not auth:
        return AuthFailure("MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH.match(auth.strip())
    if m is None:
        return AuthFailure("IncompleteSignatureException", f"Authorization header is malformed: {auth[:40]}")
    access_key, date, cred_region, cred_service, terminator = (m["cred"].split("/") + [""] * 5)[:5]
    if access_key != credentials.access_key:
        return AuthFailure("UnrecognizedClientException", "The security token included in the request is invalid.")
    amz_date = headers.get("x-amz-date", "")
    if terminator != "aws4_request" or date != amz_date[:8]:
        return AuthFailure("InvalidSignatureException", "Credential scope date/terminator does not match")
    if cred_region != region or cred_service != service:
        return AuthFailure(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region and service ({region}/{service}), "
            f"not '{cred_region}/{cred_service}'.",
        )
    failure = _check_time(amz_date, now or dt.datetime.now(dt.UTC))
    failure = failure or _check_token_and_payload(headers, body, credentials)
    if failure:
        return failure
    signed = m["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed or any(h not in headers for h in signed):
        return AuthFailure("InvalidSignatureException", f"Signed headers are incomplete: {m['signed']}")
    request = AWSRequest(method=method, url=url, data=body, headers={h: headers[h] for h in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, m["sig"]):
        return AuthFailure("InvalidSignatureException", INVALID_SIGNATURE)
    return None


def _check_time(amz_date: str, now: dt.datetime) -> AuthFailure | None:
    try:
        signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return AuthFailure("IncompleteSignatureException", f"Invalid X-Amz-Date: {amz_date!r}")
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        return AuthFailure("InvalidSignatureException", f"Signature expired: {amz_date} is now earlier/later")
    return None


def _check_token_and_payload(
    headers: Mapping[str, str], body: bytes, credentials: ReadOnlyCredentials
) -> AuthFailure | None:
    if credentials.token and headers.get("x-amz-security-token") != credentials.token:
        return AuthFailure("UnrecognizedClientException", "The security token included in the request is invalid.")
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared != hashlib.sha256(body).hexdigest():
        return AuthFailure(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    return None


# ---------------------------------------------------------------------------
# Canned answers

TEXT = "Hello! How can I help?"


def anthropic_message(model: str) -> dict[str, Any]:
    return {
        "id": f"msg_bdrk_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 10,
        },
    }


def anthropic_events(model: str) -> list[dict[str, Any]]:
    message = anthropic_message(model)
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 10},
        },
        {
            "type": "message_stop",
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 10,
                "outputTokenCount": 10,
                "invocationLatency": 321,
                "firstByteLatency": 123,
            },
        },
    ]


def converse_output() -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": TEXT}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 10, "outputTokens": 10, "totalTokens": 20},
        "metrics": {"latencyMs": 321},
    }


def converse_events() -> list[bytes]:
    return [
        converse_frame("messageStart", {"role": "assistant"}),
        converse_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": TEXT}}),
        converse_frame("contentBlockStop", {"contentBlockIndex": 0}),
        converse_frame("messageStop", {"stopReason": "end_turn"}),
        converse_frame(
            "metadata",
            {
                "usage": {"inputTokens": 10, "outputTokens": 10, "totalTokens": 20},
                "metrics": {"latencyMs": 321},
            },
        ),
    ]


def default_reply(operation: str, model_id: str) -> Reply:
    if operation == "invoke":
        usage = {
            "x-amzn-bedrock-input-token-count": "10",
            "x-amzn-bedrock-output-token-count": "10",
            "x-amzn-bedrock-invocation-latency": "321",
        }
        return Reply.json(anthropic_message(model_id), headers=usage)
    if operation == "invoke-with-response-stream":
        return Reply.events([chunk_frame(e) for e in anthropic_events(model_id)])
    if operation == "converse":
        return Reply.json(converse_output())
    if operation == "count-tokens":
        return Reply.json({"inputTokens": COUNT_TOKENS})
    return Reply.events(list(converse_events()))


# ---------------------------------------------------------------------------
# Server


class FakeBedrock:
    def __init__(
        self,
        access_key: str = "AKIDFAKEBEDROCK",
        secret_key: str = "fake-secret-key",
        region: str = "us-east-1",
        *,
        session_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.credentials = ReadOnlyCredentials(access_key, secret_key, session_token)
        self.ssl_context = ssl_context  # serve HTTPS (e.g. posing as bedrock-runtime.<region>.amazonaws.com)
        self.region = region
        self.requests: list[Received] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Condition()
        self._http: LoopbackServer | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        assert self._http is not None, "FakeBedrock not started"
        return self._http.port

    def start(self) -> str:
        self._http = LoopbackServer(self._handler(), tls=self.ssl_context).start()
        return self.base_url

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def enqueue(self, *replies: Reply) -> None:
        """Replies for the next correctly signed requests, in order (then canned defaults)."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._replies.clear()
            self.requests.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            return list(self.requests)

    # -- request handling ---------------------------------------------------------

    def _record(self, received: Received) -> Reply:
        with self._lock:
            self.requests.append(received)
            self._lock.notify_all()
            if received.auth_error is not None:
                return _auth_reply(received.auth_error)
            if received.operation is None or received.method != "POST":
                return Reply.aws_error(404, "UnknownOperationException", f"Unknown operation {received.path}")
            if self._replies:
                return self._replies.popleft()
        return default_reply(received.operation, received.model_id or "")

    def _receive(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Received:
        route = _ROUTE.fullmatch(path.split("?", 1)[0])
        failure = verify_sigv4(
            method=method,
            url=f"http://{headers.get('host', '')}{path}",
            headers=headers,
            body=body,
            credentials=self.credentials,
            region=self.region,
        )
        return Received(
            method=method,
            path=path,
            model_id=unquote(route["model"]) if route else None,
            operation=route["op"] if route else None,
            headers=headers,
            body=body,
            auth_error=None if failure is None else f"{failure.error_type}: {failure.message}",
        )

    def _handler(self) -> type[QuietHandler]:
        fake = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self._handle()

            def do_GET(self) -> None:
                self._handle()

            def _handle(self) -> None:
                headers, body = self.read_request()
                received = fake._receive(self.command, self.path, headers, body)
                self._send(fake._record(received))

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                headers = {
                    "x-amzn-requestid": str(uuid.uuid4()),
                    "date": self.date_time_string(),
                    **reply.headers,
                }
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for part in reply.parts:
                        if isinstance(part, float | int):
                            time.sleep(part)
                        elif part:
                            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                            self.wfile.flush()
                    if reply.abort:
                        self.close_connection = True
                        return
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler


def _auth_reply(error: str) -> Reply:
    error_type, _, message = error.partition(": ")
    return Reply.aws_error(403, error_type, message)
