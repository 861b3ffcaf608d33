"""Provider key failover for instances configured with several keys (`KEYS`).

Each centralized request takes the first key that is not cooling down. An
upstream 401 or 429 for a key puts it on cooldown (429: the upstream's
Retry-After, else a minute; 401: ten minutes, a revoked or mistyped key), so
the next requests use the next key. When every key cools down the gateway
answers 429 itself with the soonest Retry-After instead of spending a request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from mitmproxy import http

from addons.flow.state import FlowStates
from addons.settings.instances import Instance

RATE_LIMITED_COOLDOWN = 60.0
UNAUTHORIZED_COOLDOWN = 600.0


class KeyPool:
    def __init__(self, keys: tuple[str, ...], clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.clock = clock
        self.cooling_until: dict[str, float] = {}

    def pick(self) -> str | None:
        now = self.clock()
        for key in self.keys:
            if self.cooling_until.get(key, 0.0) <= now:
                return key
        return None

    def retry_after(self) -> int:
        """Seconds until the first key is usable again."""
        soonest = min(self.cooling_until.get(k, 0.0) for k in self.keys)
        # Rounded up: a client told to come back before a key is usable would only be refused again.
        return max(1, math.ceil(soonest - self.clock()))

    def report(self, key: str, status: int, retry_after: str | None) -> None:
        if status == 429:
            self.cooling_until[key] = self.clock() + _seconds(retry_after, RATE_LIMITED_COOLDOWN)
        elif status == 401:
            self.cooling_until[key] = self.clock() + UNAUTHORIZED_COOLDOWN


def _seconds(value: str | None, default: float) -> float:
    try:
        return max(1.0, float(value)) if value else default
    except ValueError:
        return default


class KeyPools:
    """The key pool of each instance, for as long as the process runs (one per gateway process)."""

    def __init__(self) -> None:
        self.pools: dict[str, KeyPool] = {}

    def pool(self, instance: Instance) -> KeyPool:
        pool = self.pools.get(instance.name)
        if pool is None or pool.keys != instance.keys:  # the instance's keys were reconfigured
            pool = self.pools[instance.name] = KeyPool(instance.keys)
        return pool


class KeyFailover:
    """Addon: feeds upstream 401/429 answers back into the instance's key pool."""

    def __init__(self, flows: FlowStates, pools: KeyPools) -> None:
        self.flows = flows
        self.pools = pools

    def response(self, flow: http.HTTPFlow) -> None:
        ctx = self.flows.get(flow)
        key = ctx.provider_key if ctx is not None else None
        if ctx is None or key is None or flow.response is None:
            return
        if flow.response.status_code in (401, 429) and len(ctx.instance.keys) > 1:
            self.pools.pool(ctx.instance).report(
                key, flow.response.status_code, flow.response.headers.get("retry-after"))
