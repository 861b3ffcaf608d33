"""What the transparent proxy's addons (addons/chain/proxy.py, proxy_address.py) share: per client
connection and per flow, all weakly keyed, so nothing outlives the connection or flow it is about."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import connection, http

from addons.chain.proxy_policy import HostMap, build_host_map, configured_destinations

if TYPE_CHECKING:
    from addons.chain.auth import Identity
    from addons.settings.config import Settings


@dataclass(slots=True)
class Tunnel:
    """What a CONNECT established for one client connection."""

    host: str
    secret: str  # the gateway key, re-checked per decrypted request (revocation applies mid-tunnel)
    decrypted: bool


@dataclass(slots=True)
class ProxyAuthResult:
    identity: Identity
    secret: str


@dataclass
class ProxyState:
    """Shared by the proxy addons; everything is keyed weakly by connection or flow."""

    host_map: HostMap
    destinations: frozenset[tuple[str, int]]  # admin-configured (host, port): never address-checked
    tunnels: weakref.WeakKeyDictionary[connection.Client, Tunnel] = field(
        default_factory=weakref.WeakKeyDictionary)
    # (host, port) -> the checked IP to dial, per client connection (defeats DNS rebinding).
    pins: weakref.WeakKeyDictionary[connection.Client, dict[tuple[str, int], str]] = field(
        default_factory=weakref.WeakKeyDictionary)
    absolute_auth: weakref.WeakKeyDictionary[http.HTTPFlow, ProxyAuthResult] = field(
        default_factory=weakref.WeakKeyDictionary)
    relays: weakref.WeakSet[http.HTTPFlow] = field(default_factory=weakref.WeakSet)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyState:
        return cls(host_map=build_host_map(settings), destinations=configured_destinations(settings))
