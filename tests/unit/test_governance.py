"""The governance addon in-process, with an injected clock: windows reset, periods roll, BYOK spend,
flows that end without a hook, refusals recorded with their limit; and the policy's budget rules."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.chain.auth import Identity
from addons.chain.governance import Governance
from addons.chain.intercept import Interceptor
from addons.chain.limits import GovernanceSettings, Limits
from addons.flow.records import InterceptionEnd, InterceptionStart, Record, TokenUsageRecord
from addons.flow.state import FlowContext, FlowStates, Interception
from addons.providers.anthropic import ANTHROPIC
from addons.settings.instances import Instance
from addons.store.governance import EVERYONE, GroupPolicy, Policy, UserPolicy
from addons.wire.model import RequestInfo

INSTANCE = Instance(type="anthropic", name="anthropic", keys=("sk-x",), base_url="https://api.anthropic.com",
                    dump_dir=None, bedrock=None, source="indexed")
T0 = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now, self.wall = 1000.0, T0

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.wall += dt.timedelta(seconds=seconds)


def make(policy: Policy, settings: GovernanceSettings | None = None,
         spend: dict[str, float] | None = None) -> tuple[Governance, Clock, list[Record]]:
    records: list[Record] = []
    clock = Clock()
    flows = FlowStates()
    gov = Governance(settings or GovernanceSettings(budget_period="day"), Interceptor(flows, records.append), flows,
                     policy,
                     spend if spend is not None else {}, price=lambda r: r.input_tokens / 1000,
                     priced=lambda provider, model: model.startswith("claude"),
                     clock=lambda: clock.now, wall=lambda: clock.wall)
    return gov, clock, records


def request(gov: Governance, user: str = "u1", key: str | None = "k1", model: str = "claude-sonnet-4-5",
            byok: bool = False) -> tuple[http.HTTPFlow, FlowContext]:
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages",
                                       content=orjson.dumps({"model": model}), headers=http.Headers(host="gw")))
    route = ANTHROPIC.route("POST", "/v1/messages")
    assert route is not None and route.api is not None
    ctx = FlowContext(instance=INSTANCE, provider=ANTHROPIC, route=route, api_path="/v1/messages", query="",
                      identity=Identity(user, user, key, False), byok=byok, received_at=T0)
    interception = Interception(id=str(uuid.uuid4()), api=route.api, started_at=T0, info=RequestInfo(model=model))
    ctx.interception = interception
    gov.flows.attach(flow, ctx)
    gov.request(flow)
    return flow, ctx


def status(flow: http.HTTPFlow) -> int:
    return flow.response.status_code if flow.response is not None else 0


def finish(gov: Governance, flow: http.HTTPFlow, ctx: FlowContext, tokens: int = 0) -> None:
    assert ctx.interception is not None
    iid = ctx.interception.id
    gov(InterceptionStart(iid, ctx.identity.user_id, ctx.identity.key_id, "anthropic", "anthropic", "m", "c", None,
                          "byok" if ctx.byok else "centralized", None, T0))
    gov(TokenUsageRecord(iid, None, tokens, 0, 0, 0, {}, T0, "anthropic", "claude-sonnet-4-5"))
    gov(InterceptionEnd(iid, T0, "completed"))
    flow.response = http.Response.make(200)
    gov.response(flow)


def test_rpm_window_resets_after_a_minute_and_the_refusal_is_recorded() -> None:
    gov, clock, records = make(Policy(users={"u1": UserPolicy("bob", Limits(rpm=2))}))
    for _ in range(2):
        finish(gov, *request(gov))
    flow, ctx = request(gov)
    assert status(flow) == 429 and flow.response is not None
    assert flow.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert 1 <= int(flow.response.headers["retry-after"]) <= 60
    assert ctx.interception is not None and ctx.interception.metadata["limit"] == "rpm"
    ends = [r for r in records if isinstance(r, InterceptionEnd)]
    assert len(ends) == 1 and ends[0].status == "failed"
    clock.tick(60)
    assert status(request(gov)[0]) == 0  # admitted: no response set


def test_tpm_counts_streams_in_flight_and_waits_for_tokens_to_expire() -> None:
    gov, clock, _ = make(Policy(users={"u1": UserPolicy("bob", Limits(tpm=100))}))
    finish(gov, *request(gov), tokens=80)
    clock.tick(30)
    flow, _ = request(gov)
    assert status(flow) == 0
    finish(gov, *request(gov), tokens=30)  # 110 tokens now
    refused, _ = request(gov)
    assert status(refused) == 429 and refused.response is not None
    assert int(refused.response.headers["retry-after"]) == 30  # when the first 80 expire
    clock.tick(31)
    assert status(request(gov)[0]) == 0


def test_flows_that_end_without_a_hook_free_their_slots() -> None:
    gov, _, _ = make(Policy(users={"u1": UserPolicy("bob", Limits(max_streams=1))}),
                     GovernanceSettings(max_concurrency=1))
    first, _ = request(gov)
    assert status(first) == 0 and status(request(gov)[0]) == 503  # the process-wide limit first
    first.live = False  # it ended, but neither response nor error fired
    assert status(request(gov)[0]) == 0


def test_budget_period_rolls_over_and_byok_is_not_spend() -> None:
    policy = Policy(users={"u1": UserPolicy("bob", budget_usd=1.0)})
    gov, clock, _ = make(policy, spend={"u1": 0.5})
    finish(gov, *request(gov, byok=True), tokens=5000)  # 5 USD on the user's own key
    assert gov.spend["u1"] == 0.5
    finish(gov, *request(gov), tokens=600)  # 0.6 USD: over the budget
    flow, _ = request(gov)
    assert status(flow) == 403 and flow.response is not None
    assert "spent 1.10 of 1.00 USD this day; resets at 2027-01-01T00:00:00Z" in flow.response.text
    assert flow.response.headers["x-aigw-budget-remaining-usd"] == "0.000000"
    assert status(request(gov, byok=True)[0]) == 0  # BYOK is never budgeted
    clock.tick(120)  # past midnight UTC: a new day, a new budget
    assert status(request(gov)[0]) == 0 and gov.spend == {}


def test_unpriced_models_and_allowlists() -> None:
    policy = Policy(users={"u1": UserPolicy("bob", budget_usd=10.0, groups=("eng",))},
                    groups={"eng": GroupPolicy(models=("claude-*", "gpt-5*"))})
    gov, _, _ = make(policy, GovernanceSettings(budget_unpriced="deny"))
    flow, _ = request(gov, model="gpt-5")
    assert status(flow) == 403 and flow.response is not None and "no known price" in flow.response.text
    flow, _ = request(gov, model="llama-3")
    assert status(flow) == 403 and flow.response is not None and "allowed: claude-*, gpt-5*" in flow.response.text


def test_breaker_refusals_give_the_request_back() -> None:
    gov, _, _ = make(Policy(users={"u1": UserPolicy("bob", Limits(rpm=1))}))
    flow, ctx = request(gov)
    assert ctx.interception is not None
    ctx.interception.metadata["circuit_breaker"] = "open"  # refused after governance, never sent
    flow.response = http.Response.make(503)
    gov.response(flow)
    assert status(request(gov)[0]) == 0


def budget(policy: Policy, how: str = "highest") -> Any:
    return policy.budget("u1", how)


def test_budget_rules() -> None:
    groups = {"big": GroupPolicy(500.0), "small": GroupPolicy(50.0), EVERYONE: GroupPolicy(5.0)}
    member = Policy(users={"u1": UserPolicy("bob", groups=("big", "small"))}, groups=groups)
    assert budget(member) == (500.0, "group big") and budget(member, "lowest") == (50.0, "group small")
    override = Policy(users={"u1": UserPolicy("bob", budget_usd=7.0, groups=("big",))}, groups=groups)
    assert budget(override) == (7.0, "user")
    nobody = Policy(users={"u1": UserPolicy("bob")}, groups=groups)
    assert budget(nobody) == (5.0, "group everyone")
    assert budget(Policy()) == (None, None)
