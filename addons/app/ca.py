"""The gateway's CA (mitmproxy's files in the home's certs/) and what clients need to trust it.

mitmproxy generates the CA in its confdir on first start: `mitmproxy-ca.pem`
holds the private key (owner-only), `mitmproxy-ca-cert.pem` is the public
certificate clients trust. Node (Claude Code, Copilot) *adds* it with
NODE_EXTRA_CA_CERTS; Python's httpx/requests and Codex's SSL_CERT_FILE *replace*
the default roots, so they get a bundle: the system/certifi roots plus the
gateway CA, or every tunnelled (non-AI) host would fail verification.
"""

from __future__ import annotations

import os
import re
import shlex
import ssl
import stat
from pathlib import Path
from urllib.parse import quote, urlsplit

from addons.settings.config import Settings

BASENAME = "mitmproxy"
CERT_FILE = f"{BASENAME}-ca-cert.pem"
SECRET_FILES = (f"{BASENAME}-ca.pem", f"{BASENAME}-ca.p12")  # hold the CA private key
PUBLIC_FILES = (CERT_FILE, f"{BASENAME}-ca-cert.cer", f"{BASENAME}-ca-cert.p12")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def ensure_ca(confdir: Path, key_size: int = 2048) -> Path:
    """Create the CA if missing (as the gateway would on start); return the public certificate's path."""
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, BASENAME, key_size)
    fix_permissions(confdir)
    return (confdir / CERT_FILE).resolve()


def fix_permissions(confdir: Path) -> None:
    """The CA private key is readable by its owner only, the public certificate by anyone
    (the gateway runs with umask 077, which would hide it from clients of other users)."""
    for name in SECRET_FILES:
        path = confdir / name
        if path.exists() and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # fails loudly if not ours: a CA key others can read is not acceptable
    for path, mode in ((confdir, 0o055), *((confdir / name, 0o044) for name in PUBLIC_FILES)):
        try:
            current = stat.S_IMODE(path.stat().st_mode)
            if current & mode != mode:
                os.chmod(path, current | mode)
        except (FileNotFoundError, PermissionError):  # absent, or not ours: leave it
            pass


def root_certificates() -> list[bytes]:
    """The roots a client would trust by default: the system bundle and certifi's, de-duplicated."""
    sources: list[str] = []
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            sources.append(candidate)
    try:
        import certifi

        sources.append(certifi.where())
    except ImportError:  # pragma: no cover - certifi ships with mitmproxy
        pass
    seen: dict[bytes, None] = {}
    for source in dict.fromkeys(sources):
        try:
            data = Path(source).read_bytes()
        except OSError:
            continue
        for block in _PEM.findall(data):
            seen.setdefault(block.replace(b"\r\n", b"\n"), None)
    return list(seen)


def write_bundle(dest: Path, confdir: Path) -> tuple[Path, int]:
    """Write roots + the gateway CA to `dest` (atomically); return (path, number of certificates)."""
    ca = ensure_ca(confdir).read_bytes()
    own = set(_PEM.findall(ca))
    blocks = [b for b in root_certificates() if b not in own]
    text = b"\n".join(blocks) + b"\n# aigw gateway CA\n" + ca.strip() + b"\n"
    dest = dest.expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest.resolve(), len(blocks) + 1


def reachable_address(host: str, port: int) -> str:
    """host:port clients use to reach a listener (a wildcard bind is reached on loopback)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def address_of(url: str) -> str:
    """host:port of a running gateway's URL (from its runtime file)."""
    parts = urlsplit(url)
    return reachable_address(parts.hostname or "", parts.port or 80)


def proxy_url(address: str, user_key: str | None) -> str:
    key = quote(user_key, safe="") if user_key else "<gateway-key>"
    return f"http://aigw:{key}@{address}"


def env_exports(settings: Settings, user_key: str | None, address: str, confdir: Path,
                bundle: Path | None) -> str:
    """The shell lines `aigw env` prints for a gateway at `address` (host:port)."""
    cert = (confdir / CERT_FILE).resolve()
    gateway = f"http://{address}"
    key = user_key or "<gateway-key>"
    lines = [
        "# Transparent proxy: AI traffic is recorded, everything else is tunnelled untouched.",
        f"export HTTPS_PROXY={shlex.quote(proxy_url(address, user_key))}",
        f"export NODE_EXTRA_CA_CERTS={shlex.quote(str(cert))}   # Node: Claude Code, Copilot (adds to the roots)",
    ]
    if bundle is not None:
        lines += [f"export SSL_CERT_FILE={shlex.quote(str(bundle))}   # Python/Codex: replaces the roots (bundle)",
                  f"export REQUESTS_CA_BUNDLE={shlex.quote(str(bundle))}"]
    else:
        lines += ["# Python/Codex replace the default roots, so they need a bundle (roots + gateway CA):",
                  "# run `aigw env --bundle FILE` (or `aigw ca --bundle FILE`) to write one and export",
                  "# SSL_CERT_FILE and REQUESTS_CA_BUNDLE pointing at it."]
    lines += ["", "# Or base-URL mode (no proxy): point the SDKs at the gateway routes."]
    for instance in settings.instances:
        route = f"{gateway}/api/v2/aibridge/{instance.name}"
        if instance.type == "anthropic":
            lines.append(f"# export ANTHROPIC_BASE_URL={route} ANTHROPIC_API_KEY={key}")
        elif instance.type == "openai" and instance.name != "chatgpt":
            lines.append(f"# export OPENAI_BASE_URL={route}/v1 OPENAI_API_KEY={key}")
    return "\n".join(lines)
