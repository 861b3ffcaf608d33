"""Addon: Coder's circuit breaker, one per (instance, endpoint, model) of the intercepted routes.

The state machine is `addons.breaker` (gobreaker's semantics). Here: which
outcomes count, what a rejected client gets, and the metrics.

- Failures: what the client gets from the upstream as 429, 503, 504 (and 529
  on Anthropic's API), an upstream timeout (`addons.timeouts`) or an upstream
  connection error. Key failover (`addons.keypool`) sees a 429 first and cools
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

from addons import context, metrics
from addons.breaker import Breaker, BreakerSettings, State
from addons.context import FlowContext
from addons.intercept import Interceptor
from addons.providers.base import Api
from addons.upstream import UPSTREAM_ERROR

log = logging.getLogger("aigw.circuit")

FAILURE_STATUSES = frozenset({429, 503, 504})
ANTHROPIC_OVERLOADED = 529
# FlowContext.extra key: (breaker, ticket) of a request the breaker let through.
TICKET = "circuit_breaker_ticket"

type Key = tuple[str, str, str]  # instance, endpoint, model


def is_failure(status: int, ctx: FlowContext) -> bool:
    if status in FAILURE_STATUSES:
        return True
    return status == ANTHROPIC_OVERLOADED and (ctx.route.api is Api.MESSAGES or ctx.instance.type == "anthropic")


class CircuitBreakers:
    def __init__(self, settings: BreakerSettings, interceptor: Interceptor,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.interceptor = interceptor
        self.clock = clock
        self.breakers: dict[Key, Breaker] = {}

    def breaker(self, key: Key) -> Breaker:
        found = self.breakers.get(key)
        if found is None:
            def changed(before: State, after: State, key: Key = key) -> None:
                log.warning("circuit breaker %s for instance %r, %s, model %s (was %s)", after.name.lower(),
                            key[0], key[1], key[2], before.name.lower())
                metrics.CIRCUIT_BREAKER_STATE.labels(*key).set(after.value)
                if after is State.OPEN:
                    metrics.CIRCUIT_BREAKER_TRIPS.labels(*key).inc()

            found = self.breakers[key] = Breaker(self.settings, self.clock, changed)
            metrics.CIRCUIT_BREAKER_STATE.labels(*key).set(State.CLOSED.value)
        return found

    def request(self, flow: http.HTTPFlow) -> None:
        ctx = context.get(flow)
        if ctx is None or flow.response is not None or ctx.interception is None or ctx.interception.ended:
            return
        key = (ctx.instance.name, ctx.route.name, ctx.interception.info.model or "unknown")
        breaker = self.breaker(key)
        ticket = breaker.allow()
        if ticket is not None:
            ctx.extra[TICKET] = (breaker, ticket)
            return
        metrics.CIRCUIT_BREAKER_REJECTS.labels(*key).inc()
        state = breaker.current()
        retry_after = breaker.retry_after()
        ctx.interception.metadata["circuit_breaker"] = state.name.lower().replace("_", "-")
        why = ("is open after repeated upstream failures" if state is State.OPEN
               else "is half-open and already probing the upstream")
        self.interceptor.reject(
            flow, ctx, 503, f"circuit breaker for instance {ctx.instance.name!r}, {key[1]}, model {key[2]} {why}; "
            f"retry in {retry_after}s", "overloaded_error", {"retry-after": str(retry_after)})

    def response(self, flow: http.HTTPFlow) -> None:
        ctx = context.get(flow)
        taken = ctx.extra.pop(TICKET, None) if ctx is not None else None
        if ctx is None or taken is None:
            return
        breaker, ticket = taken  # type: ignore[misc]
        status = flow.response.status_code if flow.response is not None else 0
        if UPSTREAM_ERROR in ctx.extra or is_failure(status, ctx):
            breaker.failure(ticket)
        else:
            breaker.success(ticket)

    def error(self, flow: http.HTTPFlow) -> None:
        ctx = context.get(flow)
        taken = ctx.extra.pop(TICKET, None) if ctx is not None else None
        if ctx is None or taken is None:
            return
        breaker, ticket = taken  # type: ignore[misc]
        message = flow.error.msg.lower() if flow.error else ""
        if UPSTREAM_ERROR not in ctx.extra and "client disconnected" in message:
            breaker.release(ticket)  # no verdict on the upstream
        else:
            breaker.failure(ticket)  # refused, reset, TLS failure, timeout
