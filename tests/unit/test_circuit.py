"""The circuit breaker addon's bookkeeping on mitmproxy flows: which endings count, tickets of flows
that end without a hook, the bound on per-model breakers."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.chain.auth import Identity
from addons.chain.breaker import BreakerSettings, State
from addons.chain.circuit import MAX_MODELS, OTHER_MODEL, CircuitBreakers
from addons.flow.state import FlowContext, FlowStates, Interception
from addons.providers.anthropic import ANTHROPIC
from addons.settings.instances import Instance
from addons.upstreams.base import client_left
from addons.wire.model import RequestInfo


class Rejections:
    """Stands in for the Interceptor: notes what the breaker refused (its answer is tested end to end)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def reject(self, flow: http.HTTPFlow, ctx: FlowContext, status: int, message: str, error_type: str,
               headers: dict[str, str] | None = None) -> None:
        self.statuses.append(status)
        flow.response = http.Response.make(status, message.encode(), headers or {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


INSTANCE = Instance(type="anthropic", name="anthropic", keys=(), base_url="https://api.anthropic.com",
                    dump_dir=None, bedrock=None, source="indexed")
FLOWS = FlowStates()  # the flows of flow_for, read by the breakers fixture


def flow_for(model: str = "claude-sonnet-4-5", *, http2: bool = False) -> http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages"))
    if http2:
        flow.client_conn.alpn = b"h2"
    route = ANTHROPIC.route("POST", "/v1/messages")
    assert route is not None
    ctx = FlowContext(instance=INSTANCE, provider=ANTHROPIC, route=route, api_path="/v1/messages", query="",
                      identity=Identity("u1", "alice", "k1", False), byok=False, received_at=dt.datetime.now(dt.UTC))
    ctx.interception = Interception(id="i1", api=route.api, started_at=dt.datetime.now(dt.UTC),
                                    info=RequestInfo(model=model))
    FLOWS.attach(flow, ctx)
    return flow


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rejected() -> Rejections:
    return Rejections()


@pytest.fixture
def breakers(clock: Clock, rejected: Rejections) -> CircuitBreakers:
    settings = BreakerSettings(failure_threshold=2, interval=10, timeout=30, max_requests=2)
    return CircuitBreakers(settings, rejected, FLOWS, clock)  # type: ignore[arg-type]


def fail_with(breakers: CircuitBreakers, message: str, model: str = "claude-sonnet-4-5",
              http2: bool = False) -> http.HTTPFlow:
    flow = flow_for(model, http2=http2)
    breakers.request(flow)
    flow.error = mflow.Error(message)
    breakers.error(flow)
    return flow


@pytest.mark.parametrize("message", ["Client disconnected.", "stream reset by client (CANCEL)"])
def test_a_client_that_leaves_is_no_upstream_failure(breakers: CircuitBreakers, message: str) -> None:
    for _ in range(5):
        flow = fail_with(breakers, message, http2=True)
        assert client_left(flow, FLOWS.get(flow))  # type: ignore[arg-type]
    assert breakers.breakers[("anthropic", "/v1/messages", "claude-sonnet-4-5")].current() is State.CLOSED


def test_an_upstream_reset_still_counts(breakers: CircuitBreakers) -> None:
    """An HTTP/1 client cannot reset a stream: mitmproxy's "by client" wording is the upstream's reset."""
    flows = [fail_with(breakers, "stream reset by client (CANCEL)") for _ in range(2)]
    assert not client_left(flows[0], FLOWS.get(flows[0]))  # type: ignore[arg-type]
    assert breakers.breakers[("anthropic", "/v1/messages", "claude-sonnet-4-5")].current() is State.OPEN


def test_a_timeout_is_a_failure_even_when_worded_as_a_disconnect(breakers: CircuitBreakers) -> None:
    flow = flow_for(http2=True)
    FLOWS.get(flow).upstream_error = "upstream timeout after 1s"  # type: ignore[union-attr]
    flow.error = mflow.Error("Client disconnected.")
    assert not client_left(flow, FLOWS.get(flow))  # type: ignore[arg-type]


def test_probes_of_flows_that_ended_without_a_hook_are_released(breakers: CircuitBreakers, clock: Clock,
                                                                  rejected: Rejections) -> None:
    fail_with(breakers, "connection refused")
    fail_with(breakers, "connection refused")
    clock.now += 31  # half-open: two probes
    probes = [flow_for(), flow_for()]
    for probe in probes:
        breakers.request(probe)
    breakers.request(flow_for())
    assert rejected.statuses == [503]  # both slots taken
    for probe in probes:
        probe.live = False  # ended (killed, dropped) without a response or error hook
    waiting = flow_for()
    breakers.request(waiting)
    assert rejected.statuses == [503] and waiting.response is None  # let through
    waiting.response = http.Response.make(200)
    breakers.response(waiting)
    assert waiting not in breakers.tickets


def test_ended_flows_do_not_pile_up(breakers: CircuitBreakers) -> None:
    for _ in range(1000):
        flow = flow_for()
        breakers.request(flow)
        flow.live = False
    assert len(breakers.tickets) < 200


def test_models_per_endpoint_are_bounded_and_logged_escaped(breakers: CircuitBreakers,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "aigw.circuit")
    for _ in range(2):
        fail_with(breakers, "connection refused", model="evil\nmodel")
    assert "model 'evil\\nmodel'" in caplog.text and "evil\nmodel" not in caplog.text
    for n in range(MAX_MODELS + 50):
        breakers.request(flow_for(f"model-{n}"))
    assert len(breakers.breakers) == MAX_MODELS + 1
    assert ("anthropic", "/v1/messages", OTHER_MODEL) in breakers.breakers
    breakers.request(flow_for("model-3"))  # a known model keeps its own breaker
    breakers.request(flow_for("evil\nmodel"))
    assert len(breakers.breakers) == MAX_MODELS + 1
