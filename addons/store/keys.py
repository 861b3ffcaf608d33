"""Gateway keys: creation, listing, revocation, lookup. Only hashes are stored.

A key looks like ``aigw_1a2b3c4d_<40 url-safe chars>``. The first part
(``aigw_1a2b3c4d``) is the key's public id, shown in listings and logs; the
whole string is the secret.

Timestamps are read back as epoch microseconds: fetching TIMESTAMPTZ values
into Python makes DuckDB import pytz, which is not a dependency.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import orjson

from addons.store.lake import retry_conflicts

KEY_PREFIX = "aigw_"
_KEY_RE = re.compile(r"^(aigw_[0-9a-f]{8})_([A-Za-z0-9_-]{40})$")
_ID_RE = re.compile(r"^aigw_[0-9a-f]{8}$")
_USER_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    user_id: str
    user_name: str
    admin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def usable(self, now: datetime) -> bool:
        """Not revoked and not expired at `now`."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


def new_secret() -> tuple[str, str]:
    """A fresh (key_id, full_key). The random tail carries 240 bits of entropy."""
    key_id = KEY_PREFIX + secrets.token_hex(4)
    return key_id, f"{key_id}_{secrets.token_urlsafe(30)}"


def hash_key(full_key: str) -> str:
    """sha256 hex of the whole key.

    A slow KDF (bcrypt, argon2) protects low-entropy passwords against
    guessing. These keys are 240 random bits, so guessing is infeasible even
    at a fast hash's rate, and a fast hash lets the gateway check a key on
    every request in microseconds and find it by hash.
    """
    return hashlib.sha256(full_key.encode("utf-8")).hexdigest()


def key_id_of(full_key: str) -> str | None:
    """The key's public id if `full_key` has the gateway-key format, else None."""
    m = _KEY_RE.match(full_key)
    return m.group(1) if m else None


def key_id_from(text: str) -> str:
    """The key id named by `text`, a key id or a whole key; ValueError (never echoing `text`) otherwise."""
    text = text.strip()
    if _ID_RE.match(text):
        return text
    key_id = key_id_of(text)
    if key_id is None:
        # `text` may be a secret pasted by mistake: say what was expected, not what was given.
        raise ValueError("expected a key id (aigw_ and 8 hex digits) or a whole gateway key")
    return key_id


def validate_user_name(user: str) -> str:
    if not isinstance(user, str) or not _USER_RE.match(user):
        raise ValueError(f"invalid user name {user!r}: use 1-64 characters from letters, digits and . _ @ -")
    return user


def ensure_user(conn: duckdb.DuckDBPyConnection, user: str, now: datetime | None = None) -> str:
    """The id of user `user`, created if missing."""
    validate_user_name(user)
    # A lake has no UNIQUE constraint: should two replicas add a name at once, the first row wins.
    row = conn.execute("SELECT id::VARCHAR FROM users WHERE name = ? ORDER BY created_at, id LIMIT 1",
                       [user]).fetchone()
    if row is not None:
        return str(row[0])
    user_id = str(uuid.uuid4())
    conn.execute("INSERT INTO users (id, name, created_at) VALUES (?::UUID, ?, ?::TIMESTAMPTZ)",
                 [user_id, user, _ts(_now(now))])
    return user_id


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _ts(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.isoformat()


def _from_us(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


_SELECT = (
    "SELECT k.id, k.user_id::VARCHAR, u.name, k.admin, epoch_us(k.created_at), epoch_us(k.expires_at), "
    "epoch_us(k.revoked_at), epoch_us(k.last_used_at), k.key_hash "
    "FROM api_keys AS k LEFT JOIN users AS u ON u.id = k.user_id"
)


def _info(row: tuple[Any, ...]) -> KeyInfo:
    created = _from_us(row[4])
    assert created is not None
    return KeyInfo(
        id=row[0],
        user_id=row[1],
        user_name=row[2] or "",
        admin=bool(row[3]),
        created_at=created,
        expires_at=_from_us(row[5]),
        revoked_at=_from_us(row[6]),
        last_used_at=_from_us(row[7]),
    )


def create_key(
    conn: duckdb.DuckDBPyConnection,
    user: str,
    *,
    admin: bool = False,
    expires: timedelta | None = None,
    now: datetime | None = None,
) -> tuple[KeyInfo, str]:
    """Create a key for `user` (creating the user if missing); returns (info, full_key).

    `expires` of None or zero means the key never expires.
    """
    validate_user_name(user)
    if expires is not None and expires < timedelta(0):
        raise ValueError("key expiry must not be negative")
    now = _now(now)
    expires_at = now + expires if expires else None

    def insert(cur: duckdb.DuckDBPyConnection) -> tuple[str, str, str]:
        user_id = ensure_user(cur, user, now)
        for _ in range(16):  # the 32-bit public id may collide; the secret never will
            key_id, full_key = new_secret()
            taken = cur.execute("SELECT 1 FROM api_keys WHERE id = ?", [key_id]).fetchone()
            if taken is None:
                break
        else:
            raise RuntimeError("could not allocate a unique key id")
        cur.execute(
            "INSERT INTO api_keys (id, user_id, key_hash, admin, created_at, expires_at) "
            "VALUES (?, ?::UUID, ?, ?, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ)",
            [key_id, user_id, hash_key(full_key), admin, _ts(now), _ts(expires_at)],
        )
        return user_id, key_id, full_key

    # One transaction; on a DuckLake, run again if another replica's commit (e.g. last-used times) won.
    user_id, key_id, full_key = retry_conflicts(conn, insert)
    info = KeyInfo(
        id=key_id,
        user_id=user_id,
        user_name=user,
        admin=admin,
        created_at=now.astimezone(UTC),
        expires_at=expires_at.astimezone(UTC) if expires_at else None,
        revoked_at=None,
        last_used_at=None,
    )
    return info, full_key


def list_keys(conn: duckdb.DuckDBPyConnection) -> list[KeyInfo]:
    """Every key, newest first."""
    rows = conn.execute(f"{_SELECT} ORDER BY k.created_at DESC, k.id").fetchall()
    return [_info(r) for r in rows]


def revoke_key(conn: duckdb.DuckDBPyConnection, key_id: str, now: datetime | None = None) -> bool:
    """Revoke a key; False when it is unknown or already revoked."""
    row = retry_conflicts(conn, lambda cur: cur.execute(
        "UPDATE api_keys SET revoked_at = ?::TIMESTAMPTZ WHERE id = ? AND revoked_at IS NULL",
        [_ts(_now(now)), key_id],
    ).fetchone())
    return bool(row and row[0])


def load_keys(conn: duckdb.DuckDBPyConnection) -> dict[str, KeyInfo]:
    """key_hash -> KeyInfo for every key, revoked and expired ones included."""
    return {r[8]: _info(r) for r in conn.execute(_SELECT).fetchall()}


def touch_last_used(conn: duckdb.DuckDBPyConnection, used: dict[str, datetime]) -> None:
    """Set last_used_at for many keys at once (key id -> time; never moves backwards)."""
    if not used:
        return
    payload = orjson.dumps([list(used), [_ts(t) for t in used.values()]]).decode()
    retry_conflicts(conn, lambda cur: cur.execute(
        "UPDATE api_keys AS k SET last_used_at = greatest(coalesce(k.last_used_at, u.t), u.t) "
        "FROM (SELECT UNNEST(j[1]::VARCHAR[]) AS id, UNNEST(j[2]::TIMESTAMPTZ[]) AS t "
        "FROM (SELECT ?::JSON::JSON[] AS j)) AS u WHERE k.id = u.id",
        [payload],
    ))
