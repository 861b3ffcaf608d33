"""Addon: Coder's circuit breaker, one per (instance, endpoint, model) of the intercepted routes.

The state machine is `addons.chain.breaker` (gobreaker's semantics). Here: which
outcomes count, what a rejected client gets, and the metrics.

- Failures: what the client gets from the upstream as 429, 503, 504 (and 529
  on Anthropic's API), an upstream timeout (`addons.chain.timeouts`) or an upstream
  connection error. Key failover (`addons.upstreams.keypool`) sees a 429 first and cools
  that key; the 429 still reaches the client, so it counts. Answers the
  gateway gives itself (all keys cooling, a too-large body, …) never reach the
  upstream and count as nothing; so does a client that leaves before the end.
- While open, a request is refused before it reaches the upstream: 503 in the
  client's API shape (Anthropic `overloaded_error`, OpenAI `server_error`)
  with Retry-After, and recorded as a failed interception whose metadata
  says `circuit_breaker: open`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mitmproxy import http

from addons.chain.breaker import Breaker, BreakerSettings, State
from addons.chain.intercept import Interceptor
from addons.flow.state import FlowContext, FlowStates
from addons.providers.base import Api
from addons.sinks import metrics
from addons.upstreams.base import client_left

log = logging.getLogger("aigw.circuit")

FAILURE_STATUSES = frozenset({429, 503, 504})
ANTHROPIC_OVERLOADED = 529
# Distinct models with their own breaker per (instance, endpoint); the model is what the client
# asked for, so past this many the rest share one `other` breaker (bounded memory and label sets).
MAX_MODELS = 100
OTHER_MODEL = "other"

type Key = tuple[str, str, str]  # instance, endpoint, model


def is_failure(status: int, ctx: FlowContext) -> bool:
    if status in FAILURE_STATUSES:
        return True
    return status == ANTHROPIC_OVERLOADED and (ctx.route.api is Api.MESSAGES or ctx.instance.type == "anthropic")


class CircuitBreakers:
    def __init__(self, settings: BreakerSettings, interceptor: Interceptor, flows: FlowStates,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.interceptor = interceptor
        self.flows = flows
        self.clock = clock
        self.breakers: dict[Key, Breaker] = {}
        self.models: dict[tuple[str, str], int] = {}  # (instance, endpoint): distinct models with a breaker
        # Requests let through, until their response or error hook reports the outcome.
        self.tickets: dict[http.HTTPFlow, tuple[Breaker, int]] = {}
        self._sweep_at = 64  # len(tickets) that triggers the next sweep of ended flows

    def key(self, ctx: FlowContext) -> Key:
        assert ctx.interception is not None
        instance, endpoint = ctx.instance.name, ctx.route.name
        model = ctx.interception.info.model or "unknown"
        if (instance, endpoint, model) not in self.breakers:
            if self.models.get((instance, endpoint), 0) >= MAX_MODELS:
                return instance, endpoint, OTHER_MODEL
            self.models[instance, endpoint] = self.models.get((instance, endpoint), 0) + 1
        return instance, endpoint, model

    def breaker(self, key: Key) -> Breaker:
        found = self.breakers.get(key)
        if found is None:
            def changed(before: State, after: State, key: Key = key) -> None:
                log.warning("circuit breaker %s for instance %r, %s, model %r (was %s)", after.name.lower(),
                            key[0], key[1], key[2], before.name.lower())
                metrics.CIRCUIT_BREAKER_STATE.labels(*key).set(after.value)
                if after is State.OPEN:
                    metrics.CIRCUIT_BREAKER_TRIPS.labels(*key).inc()

            found = self.breakers[key] = Breaker(self.settings, self.clock, changed)
            metrics.CIRCUIT_BREAKER_STATE.labels(*key).set(State.CLOSED.value)
        return found

    def request(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        if ctx is None or flow.response is not None or ctx.interception is None or ctx.interception.ended:
            return
        key = self.key(ctx)
        breaker = self.breaker(key)
        ticket = breaker.allow()
        if ticket is None and self.release_ended():
            ticket = breaker.allow()
        if ticket is not None:
            self.tickets[flow] = (breaker, ticket)
            if len(self.tickets) >= self._sweep_at:
                self.release_ended()
                self._sweep_at = max(64, 2 * len(self.tickets))
            return
        metrics.CIRCUIT_BREAKER_REJECTS.labels(*key).inc()
        state = breaker.current()
        retry_after = breaker.retry_after()
        ctx.interception.metadata["circuit_breaker"] = state.name.lower().replace("_", "-")
        why = ("is open after repeated upstream failures" if state is State.OPEN
               else "is half-open and already probing the upstream")
        self.interceptor.reject(
            flow, ctx, 503, f"circuit breaker for instance {ctx.instance.name!r}, {key[1]}, model {key[2]!r} {why}; "
            f"retry in {retry_after}s", "overloaded_error", {"retry-after": str(retry_after)})

    def release_ended(self) -> bool:
        """Release the tickets of flows that ended without a response or error hook (as
        `addons.chain.timeouts` forgets their watches): a half-open breaker whose probe slots they
        held would otherwise reject its model forever. True if any was released."""
        ended = [flow for flow in self.tickets if not flow.live]
        for flow in ended:
            breaker, ticket = self.tickets.pop(flow)
            breaker.release(ticket)
        return bool(ended)

    def response(self, flow: http.HTTPFlow) -> None:
        if (taken := self._outcome(flow)) is None:
            return
        ctx, breaker, ticket = taken
        status = flow.response.status_code if flow.response is not None else 0
        if ctx.upstream_error is not None or is_failure(status, ctx):
            breaker.failure(ticket)
        else:
            breaker.success(ticket)

    def error(self, flow: http.HTTPFlow) -> None:
        if (taken := self._outcome(flow)) is None:
            return
        ctx, breaker, ticket = taken
        if client_left(flow, ctx):
            breaker.release(ticket)  # no verdict on the upstream
        else:
            breaker.failure(ticket)  # refused, reset, TLS failure, timeout

    def _outcome(self, flow: http.HTTPFlow) -> tuple[FlowContext, Breaker, int] | None:
        """The flow's context and ticket, once: the flow's outcome is reported at most once."""
        taken = self.tickets.pop(flow, None)
        ctx = self.flows.get(flow)
        if taken is None or ctx is None:
            return None
        return ctx, *taken
