"""Addon: limits, budgets and model allowlists on intercepted requests.

Runs right after the interceptor (which has parsed the request and started its interception) and
before the circuit breaker, so a refusal is one failed interception row whose metadata names the
limit, and never reaches the upstream or counts as an upstream failure. Checks, in order:

- overload: intercepted requests in flight per process (503) and per client IP per second (429);
- the model allowlists of the key, the user (or their groups) (403);
- the user's budget for the period (403 naming spend, budget and reset);
- requests per minute, tokens per minute and concurrent streams of the key and of the user, the
  stricter applying (429).

Every admitted response carries the provider's own rate-limit headers for the tightest limit, and
the remaining budget, so SDKs and coding agents back off by themselves. Tokens and spend come from
the records as they are made (a sink); a stream in progress counts with the usage parsed so far.
All state lives in memory on the event loop: no query per request. The policy (who has which
limits) is reloaded by the admin API after each change; spend is rebuilt from DuckDB at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mitmproxy import http

from addons.chain.intercept import Interceptor
from addons.chain.limits import (
    WINDOW,
    GovernanceSettings,
    Limits,
    SlidingWindow,
    TokenBucket,
    period_bounds,
    retry_after_header,
)
from addons.flow.records import InterceptionEnd, InterceptionStart, Record, TokenUsageRecord
from addons.flow.state import FlowContext, FlowStates, Interception
from addons.providers.base import Api
from addons.providers.errors import Refusal
from addons.sinks import metrics
from addons.store.governance import Policy, model_refusal

log = logging.getLogger("aigw.governance")

MAX_BUCKETS = 10_000  # client IPs tracked for the rate limit before idle ones are dropped

type Subject = tuple[str, str]  # ("user", id) or ("key", id)


@dataclass(slots=True)
class Usage:
    """One subject's recent traffic."""

    requests: SlidingWindow = field(default_factory=SlidingWindow)
    tokens: SlidingWindow = field(default_factory=SlidingWindow)
    live: dict[str, Interception] = field(default_factory=dict)  # admitted and not yet finished, by id

    def live_tokens(self) -> int:
        """What the streams in flight have reported so far (counted in the window once they end)."""
        total = 0
        for interception in self.live.values():
            if interception.parser is not None:
                usage = interception.parser.summary().usage
                if usage is not None:
                    total += usage.input_tokens + usage.output_tokens
        return total


@dataclass(slots=True)
class Admitted:
    flow: http.HTTPFlow
    interception: Interception
    subjects: tuple[tuple[Subject, Limits], ...]
    at: float  # when it was counted in the request windows


class Governance:
    def __init__(self, settings: GovernanceSettings, interceptor: Interceptor, flows: FlowStates, policy: Policy,
                 spend: dict[str, float], price: Callable[[TokenUsageRecord], float | None],
                 priced: Callable[[str, str], bool], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings = settings
        self.interceptor = interceptor
        self.flows = flows
        self.policy = policy
        self.price = price  # USD of a token row, None when its model has no price
        self.priced = priced  # (provider type, model) -> whether a price is known
        self.clock = clock
        self.wall = wall
        self.period_start, self.period_end = period_bounds(settings.budget_period, wall())
        self.spend = spend  # user id -> USD in the current period
        self.usage: dict[Subject, Usage] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self.admitted: dict[str, Admitted] = {}  # by interception id
        self.owners: dict[str, tuple[str, bool]] = {}  # interception id -> (user id, budgeted), for token rows
        self.warned: set[str] = set()  # users told about their budget this period

    def replace_policy(self, policy: Policy) -> None:
        self.policy = policy

    # -- checks ----------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is not None or ctx.interception is None or ctx.interception.ended:
            return
        refusal = self.check(flow, ctx, ctx.interception)
        if refusal is None:
            return
        metrics.LIMIT_REJECTIONS.labels(refusal.reason).inc()
        ctx.interception.metadata["limit"] = refusal.reason
        self.budget_headers(refusal.headers, ctx)
        # Not the provider's 429: the key failover must not cool the key it picked for this request.
        ctx.provider_key = None
        self.interceptor.reject(flow, ctx, refusal.status, refusal.message, refusal.error_type, refusal.headers)

    def check(self, flow: http.HTTPFlow, ctx: FlowContext, interception: Interception) -> Refusal | None:
        now = self.clock()
        s = self.settings
        if s.max_concurrency and len(self.admitted) >= s.max_concurrency:
            self.sweep()
        if s.max_concurrency and len(self.admitted) >= s.max_concurrency:
            return Refusal(503, f"the gateway is at its limit of {s.max_concurrency} requests in "
                           "flight; retry shortly", "overloaded_error", {"retry-after": "1"}, reason="concurrency")
        if s.rate_limit:
            ip = flow.client_conn.peername[0] if flow.client_conn.peername else ""
            bucket = self.buckets.get(ip)
            if bucket is None:
                self._prune_buckets(now)
                bucket = self.buckets[ip] = TokenBucket(s.rate_limit, now)
            if not bucket.take(now):
                wait = bucket.retry_after(now)
                return Refusal(429, f"more than {s.rate_limit:g} requests per second from your address",
                               "rate_limit_error", self._retry(wait), reason="rate")
        user_id, key_id = ctx.identity.user_id, ctx.identity.key_id
        model = interception.info.model or ""
        refused = model_refusal(self.policy.allowed_models(user_id, key_id), model)
        if refused is not None:
            return Refusal(403, f"model {model!r} is not allowed for you; allowed: {', '.join(refused)}",
                           "permission_error", reason="model")
        if (refusal := self.check_budget(ctx, model)) is not None:
            return refusal
        subjects = self.subjects(ctx)
        api = ctx.route.api
        for subject, limits in subjects:
            usage = self.usage.get(subject)
            if usage is None:
                continue
            who = "your key" if subject[0] == "key" else "you"
            if limits.rpm is not None and usage.requests.used(now) >= limits.rpm:
                wait = usage.requests.retry_after(now, limits.rpm)
                return Refusal(429, f"{who} reached the limit of {limits.rpm} requests per minute", "rate_limit_error",
                               self._retry(wait, api, "requests", limits.rpm), reason="rpm")
            if limits.tpm is not None and (live := usage.live_tokens()) + usage.tokens.used(now) >= limits.tpm:
                # When the streams in flight alone use the limit up, their tokens count for a minute
                # once they end: the honest wait is a whole window.
                wait = usage.tokens.retry_after(now, limits.tpm - live) if live < limits.tpm else WINDOW
                return Refusal(429, f"{who} reached the limit of {limits.tpm} tokens per minute", "rate_limit_error",
                               self._retry(wait, api, "tokens", limits.tpm), reason="tpm")
            if limits.max_streams is not None and len(usage.live) >= limits.max_streams:
                self.sweep()
            if limits.max_streams is not None and len(usage.live) >= limits.max_streams:
                return Refusal(429, f"{who} already have {len(usage.live)} requests in flight "
                               f"(limit {limits.max_streams})", "rate_limit_error", self._retry(1.0), reason="streams")
        self.admit(flow, interception, subjects, now)
        return None

    def sweep(self) -> None:
        """Release admitted flows that ended without a response or error hook (so a slot is never lost)."""
        for admitted in [a for a in self.admitted.values() if not a.flow.live]:
            self.release_admitted(admitted)

    def check_budget(self, ctx: FlowContext, model: str) -> Refusal | None:
        budget, _source = self.policy.budget(ctx.identity.user_id, self.settings.budget_policy)
        if budget is None or ctx.byok:  # a user's own key is not the organisation's spend
            return None
        self._roll_period()
        spent = self.spend.get(ctx.identity.user_id, 0.0)
        reset = self.period_end.isoformat().replace("+00:00", "Z")
        if spent >= budget:
            return Refusal(403, f"budget exhausted: spent {spent:.2f} of {budget:.2f} USD this "
                           f"{self.settings.budget_period}; resets at {reset}", "permission_error", reason="budget")
        if self.settings.budget_unpriced == "deny" and not (model and self.priced(ctx.instance.type, model)):
            return Refusal(403, f"model {model!r} has no known price and this gateway refuses unpriced "
                           "models to users with a budget (see `aigw prices missing`)", "permission_error",
                           reason="budget")
        return None

    def subjects(self, ctx: FlowContext) -> tuple[tuple[Subject, Limits], ...]:
        """The user's and the key's effective limits (their own settings over the defaults)."""
        defaults = self.settings.defaults
        user = (("user", ctx.identity.user_id), self.policy.user(ctx.identity.user_id).limits.over(defaults))
        if ctx.identity.key_id is None:
            return (user,)
        return (user, (("key", ctx.identity.key_id), self.policy.key(ctx.identity.key_id).limits.over(defaults)))

    def admit(self, flow: http.HTTPFlow, interception: Interception, subjects: tuple[tuple[Subject, Limits], ...],
              now: float) -> None:
        for subject, _ in subjects:
            usage = self.usage.get(subject)
            if usage is None:
                usage = self.usage[subject] = Usage()
            usage.requests.add(now)
            usage.live[interception.id] = interception
        self.admitted[interception.id] = Admitted(flow, interception, subjects, now)
        metrics.INFLIGHT_REQUESTS.set(len(self.admitted))

    def _retry(self, seconds: float, api: Api | None = None, kind: str | None = None,
               limit: int | None = None) -> dict[str, str]:
        """Retry-After (and -ms), and for a per-minute limit the provider's headers saying none is left."""
        headers = http.Headers(retry_after=retry_after_header(seconds), retry_after_ms=str(max(1, int(seconds * 1000))))
        if kind is not None and limit is not None:
            set_rate_limit_headers(headers, api, kind, 0, limit, seconds, self.wall())
        return dict(headers.items())

    def _prune_buckets(self, now: float) -> None:
        if len(self.buckets) >= MAX_BUCKETS:
            for ip in [ip for ip, b in self.buckets.items() if b.full(now)]:
                del self.buckets[ip]

    def _roll_period(self) -> None:
        now = self.wall()
        if now >= self.period_end:
            self.period_start, self.period_end = period_bounds(self.settings.budget_period, now)
            self.spend.clear()
            self.warned.clear()

    # -- response headers ------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is None or ctx.interception is None:
            return
        admitted = self.admitted.get(ctx.interception.id)
        if admitted is None:
            return
        headers = flow.response.headers
        self.rate_limit_headers(headers, ctx.route.api, admitted)
        self.budget_headers(headers, ctx)

    def rate_limit_headers(self, headers: http.Headers, api: Api | None, admitted: Admitted) -> None:
        """The provider's own headers for the tightest of our limits, where ours is tighter than theirs."""
        now = self.clock()
        for kind in ("requests", "tokens"):
            tightest: tuple[int, int, float] | None = None  # remaining, limit, reset in seconds
            for subject, limits in admitted.subjects:
                limit = limits.rpm if kind == "requests" else limits.tpm
                usage = self.usage.get(subject)
                if limit is None or usage is None:
                    continue
                window = usage.requests if kind == "requests" else usage.tokens
                used = window.used(now) + (usage.live_tokens() if kind == "tokens" else 0)
                candidate = (max(0, limit - used), limit, window.reset_in(now))
                if tightest is None or candidate[0] < tightest[0]:
                    tightest = candidate
            if tightest is not None:
                set_rate_limit_headers(headers, api, kind, *tightest, self.wall())

    def budget_headers(self, headers: http.Headers | dict[str, str], ctx: FlowContext) -> None:
        budget, source = self.policy.budget(ctx.identity.user_id, self.settings.budget_policy)
        if budget is None or ctx.byok:
            return
        spent = self.spend.get(ctx.identity.user_id, 0.0)
        headers["x-aigw-budget-remaining-usd"] = f"{max(0.0, budget - spent):.6f}"
        if budget and spent >= budget * self.settings.budget_warn_ratio:
            reset = self.period_end.isoformat().replace("+00:00", "Z")
            headers["x-aigw-budget-warning"] = (f"{spent / budget:.0%} of the {budget:.2f} USD "
                                                f"{self.settings.budget_period} budget spent; resets at {reset}")
            if ctx.identity.user_id not in self.warned:
                self.warned.add(ctx.identity.user_id)
                log.warning("budget warning: user %s spent %.2f of %.2f USD (%s) this %s", ctx.identity.user_name,
                            spent, budget, source, self.settings.budget_period,
                            extra={"user": ctx.identity.user_name, "spend_usd": round(spent, 6),
                                   "budget_usd": budget, "budget_source": source})

    # -- end of a request --------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        self.release(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.release(flow)

    def release(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        interception = ctx.interception if ctx is not None else None
        admitted = self.admitted.get(interception.id) if interception is not None else None
        if admitted is not None:
            self.release_admitted(admitted)

    def release_admitted(self, admitted: Admitted) -> None:
        del self.admitted[admitted.interception.id]
        # The circuit breaker (after this addon) refused it without asking the upstream: not a request made.
        refunded = "circuit_breaker" in admitted.interception.metadata
        for subject, _ in admitted.subjects:
            usage = self.usage.get(subject)
            if usage is not None:
                usage.live.pop(admitted.interception.id, None)
                if refunded:
                    usage.requests.discard(admitted.at)
        metrics.INFLIGHT_REQUESTS.set(len(self.admitted))
        if len(self.usage) > MAX_BUCKETS:
            now = self.clock()
            for subject in [s for s, u in self.usage.items() if not u.live and u.requests.empty(now)
                            and u.tokens.empty(now)]:
                del self.usage[subject]

    # -- records (a recorder sink) ---------------------------------------------

    def __call__(self, record: Record) -> None:
        match record:
            case InterceptionStart():
                # A user's own provider key (BYOK) is not the organisation's spend.
                self.owners[record.id] = (record.initiator_id, record.credential_kind != "byok")
            case TokenUsageRecord():
                self.on_tokens(record)
            case InterceptionEnd():
                self.owners.pop(record.id, None)

    def on_tokens(self, record: TokenUsageRecord) -> None:
        owner = self.owners.get(record.interception_id)
        if owner is None:
            return
        user_id, budgeted = owner
        now = self.clock()
        tokens = record.input_tokens + record.output_tokens
        admitted = self.admitted.get(record.interception_id)
        subjects = [s for s, _ in admitted.subjects] if admitted else [("user", user_id)]
        for subject in subjects:
            usage = self.usage.get(subject)
            if usage is None:
                usage = self.usage[subject] = Usage()
            usage.tokens.add(now, tokens)
        cost = self.price(record) if budgeted else None
        if cost:
            self._roll_period()
            if record.created_at >= self.period_start:  # a row of the last period, arriving late, is not ours
                self.spend[user_id] = self.spend.get(user_id, 0.0) + cost


def set_rate_limit_headers(headers: http.Headers, api: Api | None, kind: str, remaining: int, limit: int,
                           reset_in: float, now: datetime) -> None:
    """Anthropic's `anthropic-ratelimit-*` (RFC 3339 reset) or OpenAI's `x-ratelimit-*` (duration reset),
    unless the upstream already reported fewer remaining."""
    if api is Api.MESSAGES:
        prefix = f"anthropic-ratelimit-{kind}"
        names = (f"{prefix}-limit", f"{prefix}-remaining", f"{prefix}-reset")
        reset = (now + timedelta(seconds=reset_in)).isoformat(timespec="seconds").replace("+00:00", "Z")
    else:
        names = (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
        reset = f"{reset_in:.3f}".rstrip("0").rstrip(".") + "s"
    theirs = headers.get(names[1], "")
    if theirs.isdigit() and int(theirs) <= remaining:
        return
    headers[names[0]], headers[names[1]], headers[names[2]] = str(limit), str(remaining), reset


__all__ = ["Governance", "set_rate_limit_headers"]
