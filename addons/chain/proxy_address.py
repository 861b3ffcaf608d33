"""Addon: the proxy's address policy, checked when a client names a destination and again when it is dialled.

A destination a client names (CONNECT target, absolute-form URL, relayed host) is resolved off the event
loop and refused when nothing it resolves to may be reached (private, loopback, link-local, reserved,
unless `--aibridge-proxy-allowed-private-cidrs` allows it); the address checked is pinned per client
connection and is the one dialled, so DNS rebinding cannot reach a refused address.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from mitmproxy import connection
from mitmproxy.proxy import server_hooks

from addons.chain.proxy_policy import IPAddress, allowed_addresses, blocked_reason, normalise_host, parse_ip
from addons.chain.proxy_state import ProxyState
from addons.providers.errors import Refusal
from addons.settings.config import Settings

log = logging.getLogger("aigw.proxy")

DNS_TIMEOUT = 10.0


async def resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses of `host`, resolved off the event loop."""
    literal = parse_ip(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), DNS_TIMEOUT)
    out: list[IPAddress] = []
    for info in infos:
        ip = parse_ip(str(info[4][0]))
        if ip is not None and ip not in out:
            out.append(ip)
    return out


class AddressGuard:
    """Addon: the address policy, checked when a client names a destination and again at dial time."""

    name = "aigw_address_guard"

    def __init__(self, settings: Settings, state: ProxyState) -> None:
        self.allowed = settings.proxy_allowed_private_cidrs
        self.state = state

    async def check(self, client: connection.Client, host: str, port: int) -> Refusal | None:
        """Resolve `host`, refuse it if nothing it resolves to may be reached, else pin the address to dial."""
        host = normalise_host(host)
        try:
            addresses = await resolve(host, port)
        except (OSError, UnicodeError) as e:
            return Refusal(502, f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}")
        except TimeoutError:
            return Refusal(502, f"cannot resolve {host}: DNS lookup timed out")
        ok, refused = allowed_addresses(addresses, self.allowed)
        if not ok:
            if not refused:
                return Refusal(502, f"cannot resolve {host}: no addresses")
            ip, why = refused[0]
            shown = host if str(ip) == host else f"{host} ({ip})"
            return Refusal(403, f"refusing to connect to {shown}: {why} address "
                           "(allow it with --aibridge-proxy-allowed-private-cidrs)", "permission_error")
        self.state.pins.setdefault(client, {})[(host, port)] = str(ok[0])
        return None

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The last word: whatever is about to be dialled was checked, and is dialled by the checked IP."""
        server = data.server
        if not server.address or server.via is not None:
            return
        host, port = normalise_host(str(server.address[0])), int(server.address[1])
        if (host, port) in self.state.destinations:
            return  # an instance base URL: the administrator's choice, never the client's
        ip = parse_ip(host)
        if ip is not None:
            why = blocked_reason(ip, self.allowed)
            if why is not None:
                server.error = f"refusing to connect to {host}: {why} address"
                log.warning("proxy: %s", server.error)
            return
        pinned = self.state.pins.get(data.client, {}).get((host, port))
        if pinned is None:
            refusal = await self.check(data.client, host, port)
            if refusal is not None:
                server.error = refusal.message
                log.warning("proxy: %s", refusal.message)
                return
            pinned = self.state.pins[data.client][(host, port)]
        server.address = (pinned, port)


__all__ = ["AddressGuard", "resolve"]
