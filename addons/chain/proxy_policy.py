"""Pure policy for the transparent proxy: which hosts are decrypted, where their
requests go, which addresses and ports a client may reach, and how the proxy
credential is read. No mitmproxy imports, no I/O: fed plain values in unit tests
and used by `aigw config check` to print the host table.

The host → instance rule (also in the README):

1. **Base-URL hosts.** Every configured instance claims the host of its base URL.
   When several instances share a host, a request goes to the one whose base-URL
   path is the longest prefix of the request path; on a tie (or when no path
   matches) the first instance in configuration order wins (legacy settings,
   then ``PROVIDER_0``, ``PROVIDER_1``, …, or the YAML list order).
2. **Well-known provider hosts** not claimed by rule 1 (``api.anthropic.com``,
   ``api.openai.com``, the three ``api.*.githubcopilot.com`` hosts, ``chatgpt.com``)
   go to the first instance of that provider kind whose base URL does *not* itself
   point at another well-known host — so an instance aimed at a corporate proxy or
   a local fake still captures the provider's traffic, while an instance on
   ``api.individual.githubcopilot.com`` does not swallow Enterprise traffic it could
   not serve. Kinds: ``anthropic``, ``openai`` (not named ``chatgpt``), ``copilot``,
   and ``chatgpt`` (the ``openai`` instance named ``chatgpt``).
3. **Amazon Bedrock runtime hosts** (``bedrock-runtime[-fips].<region>.amazonaws.com[.cn]``)
   are always decrypted, so Bedrock-native clients are recorded. An instance with
   Bedrock settings claims the runtime host of its region (and its Bedrock base URL's
   host when that is one): requests there are re-signed with its credentials. Other
   runtime hosts are reached as the client named them, with its own signature (BYOK).
4. Every other host is tunnelled without decryption. With ``enabled=false``
   nothing is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from addons.settings.config import Settings
from addons.settings.instances import Instance
from addons.settings.values import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = (80, 443)


@dataclass(frozen=True, slots=True)
class WellKnown:
    kind: str  # anthropic | openai | copilot | chatgpt
    base_path: str  # where the provider's API lives on this host ("" = at the root)


WELL_KNOWN_HOSTS: dict[str, WellKnown] = {
    "api.anthropic.com": WellKnown("anthropic", ""),
    "api.openai.com": WellKnown("openai", "/v1"),
    "api.individual.githubcopilot.com": WellKnown("copilot", ""),
    "api.business.githubcopilot.com": WellKnown("copilot", ""),
    "api.enterprise.githubcopilot.com": WellKnown("copilot", ""),
    "chatgpt.com": WellKnown("chatgpt", "/backend-api/codex"),
}


def normalise_host(host: str) -> str:
    """Hosts compare case-insensitively, without a trailing dot or IPv6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def instance_kind(instance: Instance) -> str:
    """The well-known-host kind an instance can serve (ChatGPT is an openai instance named chatgpt)."""
    if instance.type == "openai" and instance.name == "chatgpt":
        return "chatgpt"
    return instance.type


def _base_parts(instance: Instance) -> tuple[str, str]:
    parts = urlsplit(instance.base_url)
    return normalise_host(parts.hostname or ""), parts.path.rstrip("/")


@dataclass(frozen=True, slots=True)
class Target:
    """One instance reachable on a decrypted host."""

    instance: Instance
    base_path: str  # the API's path prefix on the decrypted host ("" or "/v1", …)
    reason: str  # why this instance serves the host, for `aigw config check`


@dataclass(frozen=True, slots=True)
class Match:
    """Where one decrypted request goes."""

    target: Target
    api_path: str | None  # path relative to the instance base URL; None: outside the API prefix

    @property
    def instance(self) -> Instance:
        return self.target.instance


@dataclass(frozen=True, slots=True)
class HostMap:
    targets: dict[str, tuple[Target, ...]]  # host -> candidates, preferred first
    native_bedrock: bool = False  # rule 3: decrypt every Bedrock runtime host

    def decrypts(self, host: str) -> bool:
        """Hosts an instance serves (requests are rewritten to it: never dialled by name)."""
        return normalise_host(host) in self.targets

    def is_native_bedrock(self, host: str) -> bool:
        """A Bedrock runtime host (rule 3): decrypted, claimed by an instance or not."""
        return self.native_bedrock and is_bedrock_runtime_host(host)

    def match(self, host: str, path: str) -> Match | None:
        """The instance for a request on `host` with `path` (no query); None if the host is not decrypted."""
        candidates = self.targets.get(normalise_host(host))
        if not candidates:
            return None
        best: Target | None = None
        for target in candidates:
            if _under(path, target.base_path) and (best is None or len(target.base_path) > len(best.base_path)):
                best = target
        if best is None:
            return Match(candidates[0], None)
        return Match(best, path[len(best.base_path):] or "/")


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def build_host_map(settings: Settings) -> HostMap:
    """Apply the host → instance rule (module docstring) to the configured instances."""
    if not settings.enabled:
        return HostMap({})
    targets: dict[str, list[Target]] = {}
    for instance in settings.instances:
        host, path = _base_parts(instance)
        if host:
            targets.setdefault(host, []).append(Target(instance, path, "base URL host"))
    for instance in settings.instances:
        for host in bedrock_hosts(instance):
            if host not in targets:
                targets[host] = [Target(instance, "", "Bedrock runtime host")]
    for host, known in WELL_KNOWN_HOSTS.items():
        if host in targets:
            continue
        for instance in settings.instances:
            if instance_kind(instance) == known.kind and _base_parts(instance)[0] not in WELL_KNOWN_HOSTS:
                targets[host] = [Target(instance, known.base_path, f"well-known {known.kind} host")]
                break
    return HostMap({host: tuple(found) for host, found in targets.items()}, native_bedrock=True)


_BEDROCK_RUNTIME_HOST = re.compile(r"bedrock-runtime(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")


def is_bedrock_runtime_host(host: str) -> bool:
    return _BEDROCK_RUNTIME_HOST.fullmatch(normalise_host(host)) is not None


def bedrock_hosts(instance: Instance) -> list[str]:
    """The Bedrock runtime hosts an instance with Bedrock settings claims (rule 3)."""
    bedrock = instance.bedrock
    if bedrock is None:
        return []
    hosts = [f"bedrock-runtime.{bedrock.region}.amazonaws.com"] if bedrock.region else []
    endpoint_host = normalise_host(urlsplit(bedrock.endpoint).hostname or "")
    if is_bedrock_runtime_host(endpoint_host) and endpoint_host not in hosts:
        hosts.append(endpoint_host)
    return hosts


def describe_host_map(host_map: HostMap) -> list[str]:
    """The host → instance table `aigw config check` prints."""
    if not host_map.targets and not host_map.native_bedrock:
        return ["proxy: nothing is decrypted (every CONNECT is tunnelled untouched)"]
    lines = ["proxy: decrypted hosts -> instance (every other host is tunnelled untouched)"]
    width = max((len(h) for h in host_map.targets), default=0)
    for host in sorted(host_map.targets):
        first, *others = host_map.targets[host]
        prefix = f" under {first.base_path}" if first.base_path else ""
        line = f"  {host.ljust(width)}  -> {first.instance.name}{prefix} ({first.reason})"
        if others:
            line += "; also " + ", ".join(
                f"{t.instance.name} for {t.base_path or '/'}" for t in others)
        lines.append(line)
    missing = sorted(h for h in WELL_KNOWN_HOSTS if h not in host_map.targets)
    if missing:
        lines.append(f"  not decrypted (no instance of their kind): {', '.join(missing)}")
    if host_map.native_bedrock:
        lines.append("  bedrock-runtime.*.amazonaws.com (other hosts): recorded, sent with the client's own "
                     "AWS signature (BYOK)")
    return lines


# -- destinations -----------------------------------------------------------------------


def configured_destinations(settings: Settings) -> frozenset[tuple[str, int]]:
    """(host, port) pairs an administrator configured; the address policy never applies to them."""
    out: set[tuple[str, int]] = set()
    urls = [i.base_url for i in settings.instances]
    urls += [i.bedrock.endpoint for i in settings.instances if i.bedrock is not None]
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            out.add((normalise_host(parts.hostname), port))
    return frozenset(out)


def parse_ports(text: str) -> frozenset[int]:
    """`"80,443"` -> {80, 443}; raises ValueError on anything else."""
    ports = set()
    for part in text.split(","):
        if not part.strip():
            continue
        port = int(part)
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
        ports.add(port)
    if not ports:
        raise ValueError("no ports given")
    return frozenset(ports)


def parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(normalise_host(text).partition("%")[0])
    except ValueError:
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """An IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, Teredo): it is what gets reached."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def blocked_reason(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why the proxy must not connect a client to `ip` (None: it may).

    Private, loopback, link-local (incl. the 169.254.169.254 metadata service),
    shared (CGNAT), multicast, unspecified and other reserved addresses are refused
    unless an allowed CIDR (`--aibridge-proxy-allowed-private-cidrs`) covers them.
    """
    embedded = _embedded_ipv4(ip)
    for candidate in (ip, embedded):
        if candidate is not None and any(candidate.version == n.version and candidate in n for n in allowed):
            return None
    # An IPv6 address carrying an IPv4 one reaches that one; its own flags (::/8 is "reserved") do not matter.
    target = embedded or ip
    if target.is_loopback:
        return "loopback"
    if target.is_link_local:
        return "link-local"
    if target.is_unspecified:
        return "unspecified"
    if target.is_multicast:
        return "multicast"
    if target.is_reserved:
        return "reserved"
    if target.is_private:
        return "private"
    if not target.is_global:
        return "reserved"
    return None


def allowed_addresses(addresses: Iterable[IPAddress],
                      allowed: Sequence[IPNetwork] = ()) -> tuple[list[IPAddress], list[tuple[IPAddress, str]]]:
    """Split resolved addresses into (dialable, [(refused, why)])."""
    ok: list[IPAddress] = []
    refused: list[tuple[IPAddress, str]] = []
    for ip in addresses:
        why = blocked_reason(ip, allowed)
        if why is None:
            ok.append(ip)
        else:
            refused.append((ip, why))
    return ok, refused


# -- proxy credential -------------------------------------------------------------------


class ProxyAuthError(ValueError):
    """A Proxy-Authorization header the gateway cannot use; str() says why."""


def proxy_password(header: str | None) -> str:
    """The password (the gateway key) of a `Proxy-Authorization: Basic` header.

    The user name is ignored (clients put anything there, e.g. `aigw`).
    """
    if not header or not header.strip():
        raise ProxyAuthError("proxy authentication required: set HTTPS_PROXY=http://aigw:<gateway key>@host:port")
    scheme, _, blob = header.strip().partition(" ")
    if scheme.lower() != "basic":
        # Never echoed: a client that sends the bare key has its first characters where the scheme goes.
        raise ProxyAuthError("unsupported proxy authentication scheme (use Basic: "
                             "HTTPS_PROXY=http://aigw:<gateway key>@host:port)")
    try:
        decoded = base64.b64decode(blob.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise ProxyAuthError("malformed Proxy-Authorization: not valid base64") from None
    _user, colon, password = decoded.partition(":")
    if not colon:
        raise ProxyAuthError("malformed Proxy-Authorization: expected user:password")
    if not password:
        raise ProxyAuthError("proxy authentication required: the password must be your gateway key")
    return password
