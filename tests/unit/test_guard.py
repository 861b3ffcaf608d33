"""addons/chain/guard.py in process: the request checks, the engine's fail-closed path and default deny."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from mitmproxy import http, master, options
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook
from mitmproxy.test import tflow, tutils

from addons.app.engine import HookTable, use_hook_table
from addons.chain.guard import DefaultDeny, Guard, allow_upstream, header_problem, path_problem, request_line_problem
from addons.flow.state import FlowContext, FlowStates
from addons.settings.config import Settings
from addons.settings.loader import load
from addons.settings.values import ConfigError


@pytest.mark.parametrize("path", [
    "/api/v2/aibridge/anthropic/v1/models/../messages",
    "/api/v2/aibridge/anthropic/v1/models/%2e%2e/messages",
    "/api/v2/aibridge/anthropic/v1/models/%2E%2e/messages",
    "/api/v2/aibridge/anthropic/v1/models/%252e%252e/messages",
    "/api/v2/aibridge/anthropic/v1/models/%25252E%25252E/messages",
    "/api/v2/aibridge/anthropic/api/event_logging/../../v1/messages",
    "/api/v2/aibridge/openai/v1/models/../chat/completions",
    "/api/v2/aibridge/openai/v1/models/./x",
    "/api/v2/aibridge/openai/v1/models/..",
    "/api/v2/aibridge/openai/v1/models/..;/chat/completions",
    "/api/v2/aibridge/openai/v1/models%2f..%2fchat/completions",
    "/api/v2/aibridge/openai/v1/models\\..\\chat/completions",
    "/api/v2/aibridge/openai/v1/models%5c..%5cchat",
    "/api/v2/aibridge//openai/v1/models",
    "/api/v2/aibridge/openai/v1/models%2F%2Fx",
    "/api/v2/aibridge/openai/v1/models/%EF%BC%8E%EF%BC%8E/chat",  # fullwidth dots (NFKC: "..")
    "/api/v2/aibridge/openai/v1/models/%00",
    "/api/v2/aibridge/openai/v1/models/%0d%0aX: y",
    "/api/v2/aibridge/openai/v1/%2525252525252e",
    "v1/models",
])
def test_refused_paths(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize("path", [
    "/api/v2/aibridge/anthropic/v1/messages?beta=true",
    "/api/v2/aibridge/openai/v1/models/",
    "/v1/models/gpt-4.1",
    "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.anthropic.claude-v1%3A0/invoke",
    "/v1/models/..x/...",
    "/healthz",
    "/",
    "/x?a=../..&b=//",
])
def test_accepted_paths(path: str) -> None:
    assert path_problem(path) is None


def request_with(fields: list[tuple[bytes, bytes]], method: bytes = b"POST", path: bytes = b"/v1/x") -> http.Request:
    return tutils.treq(method=method, path=path, headers=http.Headers(fields))


@pytest.mark.parametrize(("fields", "status"), [
    ([(b"x-api-key", b"\xff")], 400),
    ([(b"authorization", "Bearer caf\u00e9".encode())], 400),
    ([(b"x-note", b"a\rb")], 400),
    ([(b"x-note", b"a\nb")], 400),
    ([(b"x-note", b"a\x00b")], 400),
    ([(b"bad name", b"v")], 400),
    ([(b"x-h", b"v")] * 101, 431),
    ([(b"x-big", b"a" * (64 * 1024))], 431),
])
def test_refused_headers(fields: list[tuple[bytes, bytes]], status: int) -> None:
    problem = header_problem(request_with(fields), 100, 64 * 1024)
    assert problem is not None and problem.status == status


def test_accepted_headers() -> None:
    fields = [(b"x-api-key", b"aigw_abc.def"), (b"x-title", "caf\u00e9".encode()), (b"user-agent", b"a\tb")]
    assert header_problem(request_with(fields), 100, 64 * 1024) is None
    assert header_problem(request_with([(b"x-h", b"v")] * 100), 100, 64 * 1024) is None


def test_request_line() -> None:
    assert request_line_problem(request_with([], path="/v1/caf\u00e9".encode())) is not None
    assert request_line_problem(request_with([], method=b"GE T")) is not None
    assert request_line_problem(request_with([], path=b"/v1/x?q=%C3%A9")) is None


# -- the engine's fail-closed path ------------------------------------------------------------


class Raising:
    """An addon whose every hook raises (a stand-in for any aigw addon with a bug)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        raise self.exc

    def request(self, flow: http.HTTPFlow) -> None:
        raise self.exc

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        raise self.exc


class Failures:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, flow: http.HTTPFlow, message: str) -> None:
        self.seen.append(message)


def settings() -> Settings:
    return load(None, {"CODER_AIBRIDGE_PROVIDER_0_TYPE": "anthropic",
                       "CODER_AIBRIDGE_PROVIDER_0_KEY": "sk-ant-test-0000000000",
                       "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": "http://127.0.0.1:9"})


def engine(*addons: Any) -> HookTable:
    m = master.Master(options.Options())
    use_hook_table(m)
    table = m.addons
    assert isinstance(table, HookTable)
    table.add(*addons)
    return table


def gateway_flow(path: str = "/api/v2/aibridge/anthropic/v1/messages") -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.path = path
    f.request.host = "8.8.8.8"
    f.request.port = 22
    return f


@pytest.mark.parametrize(("exc", "status"), [(RuntimeError("bug"), 500),
                                             (UnicodeEncodeError("utf-8", "", 0, 1, "x"), 400)])
async def test_an_addon_raising_gets_the_flow_answered(exc: Exception, status: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    failures = Failures()
    guard = Guard(settings(), FlowStates(), failures)
    table = engine(guard, Raising(exc), DefaultDeny(guard))
    f = gateway_flow()
    with caplog.at_level(logging.ERROR):
        await table.handle_lifecycle(HttpRequestHeadersHook(f))
    assert f.response is not None and f.response.status_code == status
    body = json.loads(f.response.content or b"")
    assert body["type"] == "error" and body["error"]["type"] in ("api_error", "invalid_request_error")
    assert not f.request.stream
    assert [r.message for r in caplog.records].count(
        "Raising failed in requestheaders (interception -); the gateway answers the flow itself") == 1
    assert len(failures.seen) == 1


async def test_responseheaders_failure_replaces_the_upstream_answer() -> None:
    guard = Guard(settings(), FlowStates(), Failures())
    table = engine(guard, Raising(RuntimeError("bug")))
    f = tflow.tflow(resp=True)
    await table.handle_lifecycle(HttpResponseHeadersHook(f))
    assert f.response is not None and f.response.status_code == 500
    assert callable(f.response.stream)
    assert f.response.stream(b"upstream secret body") == []
    assert json.loads(f.response.stream(b""))["type"] == "error"


class StreamsThrough:
    """A later addon that would relay the upstream's body as it comes."""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        flow.response.stream = True


async def test_after_a_responseheaders_failure_no_later_addon_runs() -> None:
    guard = Guard(settings(), FlowStates(), Failures())
    f = tflow.tflow(resp=True)
    await engine(guard, Raising(RuntimeError("bug")), StreamsThrough()).handle_lifecycle(HttpResponseHeadersHook(f))
    assert f.response is not None and f.response.status_code == 500 and callable(f.response.stream)


async def test_the_guard_failing_kills_the_flow() -> None:
    class BrokenGuard(Guard):
        def fail(self, *args: Any) -> None:
            raise RuntimeError("guard bug")

    table = engine(BrokenGuard(settings(), FlowStates()), Raising(RuntimeError("bug")))
    f = gateway_flow()
    await table.handle_lifecycle(HttpRequestHeadersHook(f))
    assert f.error is not None and f.killable is False  # killed: mitmproxy never forwards it


class Chooses:
    """Routes like an aigw addon that picked an upstream (then, optionally, a bug moves the request)."""

    def __init__(self, flows: FlowStates, move_to: str | None = None) -> None:
        self.flows = flows
        self.move_to = move_to

    def request(self, flow: http.HTTPFlow) -> None:
        flow.request.url = "http://127.0.0.1:9/v1/messages"
        allow_upstream(self.flows, flow)
        if self.move_to:
            flow.request.url = self.move_to


async def test_default_deny() -> None:
    guard = Guard(settings(), FlowStates())
    unrouted = gateway_flow()
    await engine(guard, DefaultDeny(guard)).handle_lifecycle(HttpRequestHook(unrouted))
    assert unrouted.response is not None and unrouted.response.status_code == 403

    chosen = gateway_flow()
    await engine(guard, Chooses(guard.flows), DefaultDeny(guard)).handle_lifecycle(HttpRequestHook(chosen))
    assert chosen.response is None

    moved = gateway_flow()
    chain = engine(guard, Chooses(guard.flows, "http://8.8.8.8:22/x"), DefaultDeny(guard))
    await chain.handle_lifecycle(HttpRequestHook(moved))
    assert moved.response is not None and moved.response.status_code == 403


async def test_default_deny_refuses_a_routed_flow_outside_the_configured_upstreams() -> None:
    s = settings()
    guard = Guard(s, FlowStates())
    f = gateway_flow()
    f.request.url = "http://10.9.9.9:80/v1/messages"
    allow_upstream(guard.flows, f)
    guard.flows.attach(f, FlowContext.__new__(FlowContext))  # routed to an instance, but not to its base URL
    await engine(guard, DefaultDeny(guard)).handle_lifecycle(HttpRequestHook(f))
    assert f.response is not None and f.response.status_code == 403


async def test_streamed_requests_are_decided_at_requestheaders() -> None:
    guard = Guard(settings(), FlowStates())
    f = gateway_flow()
    f.request.stream = True
    await engine(guard, DefaultDeny(guard)).handle_lifecycle(HttpRequestHeadersHook(f))
    assert f.response is not None and f.response.status_code == 403 and not f.request.stream


def test_error_shapes() -> None:
    guard = Guard(settings(), FlowStates())
    anthropic = guard.error_response(gateway_flow(), 400, "m", "invalid_request_error")
    assert json.loads(anthropic.content or b"") == {"type": "error", "error": {"type": "invalid_request_error",
                                                                                "message": "m"}}
    unknown = guard.error_response(gateway_flow("/elsewhere"), 400, "m", "invalid_request_error")
    assert json.loads(unknown.content or b"")["error"]["message"] == "m"


# -- limits configuration and the stream taps -----------------------------------------------


@pytest.mark.parametrize(("value", "size"), [("32MiB", 32 * 1024 * 1024), ("500KiB", 500 * 1024), ("64k", 65536),
                                             ("1MB", 1000 * 1000), ("1048576", 1048576), ("2 GiB", 2 * 1024**3)])
def test_sizes(value: str, size: int) -> None:
    assert load(None, {"CODER_AIBRIDGE_MAX_BODY_SIZE": value}).max_body_size == size


def test_limit_defaults_and_errors() -> None:
    defaults = load(None, {})
    assert (defaults.max_body_size, defaults.max_header_count, defaults.max_header_bytes) == (32 * 1024**2, 100,
                                                                                               64 * 1024)
    for env, value in (("CODER_AIBRIDGE_MAX_BODY_SIZE", "lots"), ("CODER_AIBRIDGE_MAX_BODY_SIZE", "0"),
                       ("CODER_AIBRIDGE_MAX_HEADER_COUNT", "-1"), ("CODER_AIBRIDGE_MAX_HEADER_BYTES", "1.5k")):
        with pytest.raises(ConfigError, match=env):
            load(None, {env: value})


class BrokenParser:
    def skips(self, *block: Any) -> bool:
        raise RuntimeError("parser bug")

    def on_event(self, event: Any) -> None:
        raise RuntimeError("parser bug")


def test_stream_taps_never_raise() -> None:
    """The taps run inside mitmproxy's core, outside any hook: the guard cannot catch them, so they must not raise."""
    from addons.sinks.dumps import _Tee
    from addons.upstreams.direct import StreamTap

    tap = StreamTap(BrokenParser(), hide_usage=True)
    chunk = b'event: message_start\ndata: {"type":"message_start"}\n\n'
    assert tap(chunk) == chunk and tap(b"\xff\x00 not sse") == b"\xff\x00 not sse" and tap(b"") == b""

    def broken_sink(data: bytes) -> None:
        raise OSError("disk full")

    assert _Tee(True, broken_sink)(chunk) == chunk


def test_bedrock_taps_never_raise() -> None:
    from addons.upstreams.bedrock_invoke import EventStreamToSSE
    from addons.upstreams.bedrock_native import RelayTap

    class Broken:
        def feed(self, chunk: bytes) -> None:
            raise RuntimeError("parser bug")

    converter = EventStreamToSSE()
    out = converter(b"\x00\x00\x00\x10garbage-garbage-garbage")
    assert b"event: error" in b"".join(out) and converter(b"") == []
    relay = RelayTap(Broken())  # type: ignore[arg-type]
    assert relay(b"\x00\x00abc") == b"\x00\x00abc" and relay(b"") == b""
