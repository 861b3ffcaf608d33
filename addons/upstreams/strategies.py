"""Addon: the upstream strategies, and which one serves each flow.

The provider's own API (`DirectUpstream`, with the instances' key pools) serves
every flow no other strategy claims. Every Bedrock instance gets a
`BedrockUpstream` (Anthropic clients over InvokeModel) and a
`NativeBedrockUpstream` (Bedrock-native clients through the proxy, re-signed
with the instance's credentials); Bedrock-native clients with their own
signature share one BYOK `NativeBedrockUpstream`. AWS credentials resolve and
refresh on `BedrockCredentials`' own threads, started and stopped here; the
event loop only ever reads the current frozen set.
"""

from __future__ import annotations

import asyncio
import logging

from addons.flow.state import FlowContext
from addons.providers.bedrock import BEDROCK
from addons.settings.config import Settings
from addons.upstreams.aws import credentials_for
from addons.upstreams.base import Upstream
from addons.upstreams.bedrock_invoke import BedrockUpstream
from addons.upstreams.bedrock_native import NativeBedrockUpstream
from addons.upstreams.direct import DirectUpstream
from addons.upstreams.keypool import KeyPools

log = logging.getLogger("aigw.bedrock")

# How long startup waits for the first credential resolution (IMDS/SSO can be slow).
STARTUP_WAIT = 10.0


class Upstreams:
    """Addon: the strategies (see the module docstring). Credentials start at gateway start and stop
    with it; `upstream_for` is the Interceptor's strategy lookup."""

    def __init__(self, settings: Settings, pools: KeyPools) -> None:
        self.direct = DirectUpstream(pools)
        self.bedrock: dict[str, BedrockUpstream] = {
            i.name: BedrockUpstream(i, i.bedrock, credentials_for(i.bedrock))
            for i in settings.instances
            if i.bedrock is not None
        }
        # Bedrock-native clients through the proxy: re-signed with an instance's
        # credentials (centralized), or with their own signature untouched (BYOK).
        self.native = {name: NativeBedrockUpstream(u.settings, u.credentials, u.region)
                       for name, u in self.bedrock.items()}
        self.native_byok = NativeBedrockUpstream(None, None, None)

    def upstream_for(self, ctx: FlowContext) -> Upstream:
        chosen: Upstream | None
        if ctx.provider is BEDROCK:  # a Bedrock-native request (recorded or passthrough)
            chosen = self.native_byok if ctx.byok else self.native.get(ctx.instance.name)
        else:
            chosen = self.bedrock.get(ctx.instance.name) if ctx.instance.bedrock is not None else None
        return chosen or self.direct

    async def start(self, timeout: float = STARTUP_WAIT) -> None:
        """Start every instance's credentials and wait (off the loop) for the first resolution,
        so the first requests after start-up do not fail just because the chain was still loading."""
        for upstream in self.bedrock.values():
            upstream.credentials.start()
        await asyncio.gather(*(asyncio.to_thread(u.credentials.wait_ready, timeout)
                               for u in self.bedrock.values()))
        for name, upstream in self.bedrock.items():
            if upstream.credentials.current() is None:
                log.warning("bedrock instance %r: AWS credentials unavailable (requests answer 502 until "
                            "they resolve): %s", name, upstream.credentials.error)
            if upstream.region is None:
                log.warning("bedrock instance %r: no signing region (set its BEDROCK_REGION)", name)

    def done(self) -> None:
        for upstream in self.bedrock.values():
            upstream.credentials.stop()
