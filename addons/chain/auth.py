"""Gateway keys: the in-memory key cache and how a request presents its key.

Keys live in DuckDB as hashes; the running gateway keeps `hash -> KeyInfo` in
memory so authenticating is one sha256 and one dict lookup on the event loop.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

from mitmproxy import http

from addons.sinks.redaction import looks_like_gateway_key
from addons.store.keys import KeyInfo, hash_key


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    user_name: str
    key_id: str | None
    admin: bool


# The local operator (holder of the runtime admin token), for CLI calls.
LOCAL_ADMIN = Identity(user_id="00000000-0000-0000-0000-000000000000", user_name="local-admin",
                       key_id=None, admin=True)


class KeyCache:
    def __init__(self, keys: dict[str, KeyInfo]) -> None:
        self._by_hash = keys
        self._lock = threading.Lock()
        self.admin_token = secrets.token_urlsafe(32)
        self.last_used: dict[str, datetime] = {}

    def replace(self, keys: dict[str, KeyInfo]) -> None:
        with self._lock:
            self._by_hash = keys

    def entries(self) -> dict[str, KeyInfo]:
        """The current `hash -> KeyInfo` map (replaced whole on every change, never mutated)."""
        return self._by_hash

    def authenticate(self, token: str | None, now: datetime, *, local_admin: bool = False) -> Identity | None:
        """The identity a credential stands for; the local admin token counts only where `local_admin`
        (the admin API, called from this machine), never for provider traffic."""
        if not token or not token.isascii():
            return None  # keys are ASCII; anything else (e.g. undecodable header bytes) is no key
        if self.is_admin_token(token):
            return LOCAL_ADMIN if local_admin else None
        info = self._by_hash.get(hash_key(token))
        if info is None or not info.usable(now):
            return None
        self.last_used[info.id] = now
        return Identity(user_id=str(info.user_id), user_name=info.user_name, key_id=info.id, admin=info.admin)

    def is_gateway_credential(self, value: str | None, secret: str | None = None) -> bool:
        """Whether a presented credential is the gateway's and not the client's own (BYOK): `secret` (the key
        the request authenticated with), a gateway key, anything shaped like one, or the local admin token."""
        if not value:
            return False
        return (value == secret or looks_like_gateway_key(value) or self.is_admin_token(value)
                or (value.isascii() and hash_key(value) in self._by_hash))

    def is_admin_token(self, token: str) -> bool:
        return token.isascii() and hmac.compare_digest(token.encode(), self.admin_token.encode())

    def take_last_used(self) -> dict[str, datetime]:
        used, self.last_used = self.last_used, {}
        return used


def bearer(headers: http.Headers) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def looks_like_provider_key(token: str) -> bool:
    """An OpenAI (`sk-…`, `sk-proj-…`) or Anthropic (`sk-ant-…`) key: what users paste in place of their
    gateway key (`aigw_…`) when they set the client's API key to the provider's."""
    return token.startswith("sk-")


def presented_credential(headers: http.Headers) -> str | None:
    """The credential a client sent in the provider's usual headers."""
    return headers.get("x-api-key") or bearer(headers)
