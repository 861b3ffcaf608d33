"""Credential redaction shared by raw dumps and the mitmweb UI.

Pure functions, no mitmproxy imports: a header keeps its name and loses its
value ("Authorization: Bearer [REDACTED]"), URL query parameters that carry
credentials lose their values, and known secret values are scrubbed from any
other text (bodies, command results) that could echo them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from addons.settings.config import Settings

REDACTED = "[REDACTED]"
_REDACTED_B = REDACTED.encode()

# Headers whose whole value is a credential. Names are compared lower-cased.
SENSITIVE_HEADERS = frozenset({
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",  # Azure OpenAI
    "x-goog-api-key",
    "x-aigw-token",  # the gateway key on BYOK requests
    "cookie",
    "set-cookie",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-credential",
})
# Anything else that looks like a credential by name (x-github-token, x-client-secret, …).
_SENSITIVE_NAME = re.compile(r"token|secret|passw|api[-_]?key|credential|signature", re.IGNORECASE)
# Headers that carry a scheme before the credential; the scheme helps debugging and is not secret.
_SCHEMED = frozenset({"authorization", "proxy-authorization"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9._~+/-]*)\s+\S")

_SENSITIVE_QUERY = frozenset({
    "key", "api_key", "api-key", "apikey", "token", "access_token", "refresh_token", "id_token", "auth",
    "sig", "signature", "x-amz-signature", "x-amz-security-token", "x-amz-credential", "password",
    "secret", "client_secret", "code",
})

# Secrets shorter than this are not scrubbed by value: they would mangle ordinary text.
MIN_SECRET_LENGTH = 8

# The start of a gateway key (addons/store/keys.py: `aigw_<8 hex>_<secret>`), valid or not: such a value
# is never a provider credential and never leaves the gateway, whatever header or parameter carries it.
_GATEWAY_KEY_SHAPE = re.compile(r"aigw_[0-9a-f]{8}_", re.IGNORECASE)


def looks_like_gateway_key(value: str) -> bool:
    """Whether `value` (a credential, a scheme and credential, or a query value) is gateway-key-shaped."""
    return _GATEWAY_KEY_SHAPE.match(value.strip().rpartition(" ")[2]) is not None


def is_sensitive_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in SENSITIVE_HEADERS or _SENSITIVE_NAME.search(lowered) is not None


def redact_header_value(name: str, value: str) -> str:
    """The value to show for header `name`: unchanged, or redacted with its scheme kept."""
    if not value or not is_sensitive_header(name):
        return value
    if name.lower() in _SCHEMED and (m := _SCHEME.match(value)):
        return f"{m.group(1)} {REDACTED}"
    return REDACTED


def is_sensitive_query_name(name: str) -> bool:
    """Whether a (raw, possibly percent-encoded) query parameter name carries a credential."""
    lowered = _query_name(name)
    return lowered in _SENSITIVE_QUERY or _SENSITIVE_NAME.search(lowered) is not None


def _query_name(name: str) -> str:
    # Decoded so `%6Bey` or `api%5Fkey` cannot slip past (`+` is a space in query strings); `key[]` and
    # `key[0]` are `key` to the frameworks that read them.
    return _BRACKETS.sub("", unquote_plus(name).strip().lower())


_BRACKETS = re.compile(r"(\[[^\]]*\])+$")
# `;` separates parameters too for some servers (and for Python's parse_qs before 3.10).
_SEPARATORS = re.compile(r"([&;])")


def _query_parts(query: str) -> list[tuple[str, str, str, str]]:
    """`a=1;b&c=` -> [("", "a", "=", "1"), (";", "b", "", ""), ("&", "c", "=", "")]: separator, name, `=`, value."""
    tokens = _SEPARATORS.split(query)
    return [(tokens[i - 1] if i else "", *tokens[i].partition("=")) for i in range(0, len(tokens), 2)]


def _carries_credential(name: str, value: str, names: frozenset[str] | None) -> bool:
    """By name (`names`, or any credential-like name when None), or by a gateway-key-shaped value."""
    if looks_like_gateway_key(unquote_plus(value)):
        return True
    lowered = _query_name(name)
    return lowered in names if names is not None else (
        lowered in _SENSITIVE_QUERY or _SENSITIVE_NAME.search(lowered) is not None)


def redact_query(query: str) -> str:
    """`a=1&key=s3cret` -> `a=1&key=[REDACTED]`; order and everything else untouched."""
    if not query:
        return query
    return "".join(sep + name + eq + (REDACTED if value and _carries_credential(name, value, None) else value)
                   for sep, name, eq, value in _query_parts(query))


def strip_credential_query(query: str) -> str:
    """`a=1&key=s3cret` -> `a=1`: credential parameters removed before a request goes upstream.

    Removed: the known credential names (display redaction is broader, so that an ordinary parameter
    such as `page_token` still reaches the provider) and any gateway-key-shaped value, whatever its name.
    """
    kept = [(sep, name + eq + value) for sep, name, eq, value in _query_parts(query)
            if (name or value) and not _carries_credential(name, value, _SENSITIVE_QUERY)]
    return "".join((sep if i else "") + part for i, (sep, part) in enumerate(kept))


def redact_url(url: str) -> str:
    """Redact credential query parameters and userinfo (`user:pass@`) of a URL or path."""
    base, sep, rest = url.partition("?")
    fragment = ""
    if "#" in rest:
        rest, _, frag = rest.partition("#")
        fragment = "#" + frag
    scheme, dsep, after = base.partition("://")
    if dsep:
        authority, slash, path = after.partition("/")
        if "@" in authority:
            authority = REDACTED + "@" + authority.rpartition("@")[2]
        base = f"{scheme}://{authority}{slash}{path}"
    return base + (sep + redact_query(rest) if sep else "") + fragment


def without_query_credentials(target: str) -> str:
    """A URL or `path?query` with the credential query parameters removed (see strip_credential_query)."""
    base, sep, rest = target.partition("?")
    if not sep:
        return target
    query, hsep, fragment = rest.partition("#")
    query = strip_credential_query(query)
    return base + ("?" + query if query else "") + hsep + fragment


# A URL or path with a query inside free text (log lines, error messages); quotes and
# backslashes end it so JSON-escaped text stays valid.
_URL_IN_TEXT = re.compile(r"[^\s\"'<>\\]*\?[^\s\"'<>\\]+")


def redact_urls_in_text(text: str) -> str:
    """Apply redact_url to every URL-with-query in `text`."""
    if "?" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def credential_values(fields: Iterable[tuple[str, str]]) -> set[str]:
    """The secret values a set of headers carries (the credential with and without its scheme)."""
    out: set[str] = set()
    for name, value in fields:
        if not value or not is_sensitive_header(name):
            continue
        out.add(value)
        if name.lower() in _SCHEMED and _SCHEME.match(value):
            out.add(value.split(None, 1)[1].strip())
    return {s for s in out if len(s) >= MIN_SECRET_LENGTH}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in `text`."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    for secret in secrets:
        if len(secret) < MIN_SECRET_LENGTH:
            continue
        raw = secret.encode("utf-8", "surrogateescape")
        if raw in data:
            data = data.replace(raw, _REDACTED_B)
    return data


def configured_secrets(settings: Settings) -> frozenset[str]:
    """Every secret the configuration holds (provider keys, AWS keys), to scrub by value."""
    out: set[str] = set()
    for instance in settings.instances:
        out.update(instance.keys)
        if instance.bedrock is not None:
            out.update(s for s in (instance.bedrock.access_key, instance.bedrock.access_key_secret) if s)
    return frozenset(s for s in out if len(s) >= MIN_SECRET_LENGTH)
