"""Governance tables: per-user and per-key limits, groups with budgets, model allowlists, spend.

Functions take a DuckDB connection, like addons/store/keys.py: the CLI calls them on the file
when no gateway runs, the admin API on the writer thread when one does. `load_policy` builds the
immutable snapshot the running gateway enforces (addons/chain/governance.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from addons.chain.limits import (
    MAX_BUDGET_USD,
    NO_LIMITS,
    Limits,
    effective_budget,
    model_allowed,
    parse_models,
    period_bounds,
)
from addons.store.keys import ensure_user, validate_user_name
from addons.store.lake import retry_conflicts

EVERYONE = "everyone"  # the group every user is in: its budget applies to users in no budgeted group
_GROUP_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LIMIT_FIELDS = ("rpm", "tpm", "max_streams")
USER_FIELDS = ("budget_usd", *LIMIT_FIELDS, "models")
KEY_FIELDS = (*LIMIT_FIELDS, "models")
GROUP_FIELDS = ("budget_usd", "models")


@dataclass(frozen=True, slots=True)
class UserPolicy:
    name: str
    limits: Limits = NO_LIMITS
    budget_usd: float | None = None
    models: tuple[str, ...] | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    budget_usd: float | None = None
    models: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    limits: Limits = NO_LIMITS
    models: tuple[str, ...] | None = None


NO_USER = UserPolicy(name="")
NO_KEY = KeyPolicy()


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the gateway enforces per request, loaded at start and after every change."""

    users: dict[str, UserPolicy] = field(default_factory=dict)  # by user id
    groups: dict[str, GroupPolicy] = field(default_factory=dict)  # by name
    keys: dict[str, KeyPolicy] = field(default_factory=dict)  # by key id

    def user(self, user_id: str) -> UserPolicy:
        return self.users.get(user_id, NO_USER)

    def key(self, key_id: str | None) -> KeyPolicy:
        return self.keys.get(key_id, NO_KEY) if key_id else NO_KEY

    def budget(self, user_id: str, policy: str) -> tuple[float | None, str | None]:
        """(budget in USD, where it comes from) for the user; (None, None): no budget."""
        user = self.user(user_id)
        if user.budget_usd is not None:
            return user.budget_usd, "user"
        budgeted = [(g.budget_usd, name) for name in user.groups
                    if (g := self.groups.get(name)) is not None and g.budget_usd is not None]
        if not budgeted and (everyone := self.groups.get(EVERYONE)) is not None and everyone.budget_usd is not None:
            budgeted = [(everyone.budget_usd, EVERYONE)]
        amount = effective_budget(None, [b for b, _ in budgeted], policy)
        if amount is None:
            return None, None
        return amount, next(f"group {name}" for b, name in budgeted if b == amount)

    def allowed_models(self, user_id: str, key_id: str | None) -> list[tuple[str, ...]]:
        """The allowlists a requested model must match, every one of them (empty: any model).

        The key's list always applies; the user's own list replaces their groups' lists, which
        add up (each group grants its models)."""
        lists = []
        if (key_models := self.key(key_id).models) is not None:
            lists.append(key_models)
        user = self.user(user_id)
        if user.models is not None:
            lists.append(user.models)
        else:
            granted = [p for name in (*user.groups, EVERYONE) if (g := self.groups.get(name)) is not None
                       and g.models is not None for p in g.models]
            if granted:
                lists.append(tuple(dict.fromkeys(granted)))
        return lists


def model_refusal(lists: list[tuple[str, ...]], model: str) -> tuple[str, ...] | None:
    """None when `model` is allowed; else the patterns it had to match (for the error message)."""
    for patterns in lists:
        if not model_allowed(model, patterns):
            return patterns
    return None


# --------------------------------------------------------------------------- values


def parse_field(name: str, value: Any) -> Any:
    """Validate one setting (from the CLI or the admin API); None clears it."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if name == "models":
        return ",".join(parse_models(value if isinstance(value, str) else ",".join(map(str, value))))
    if name == "budget_usd":
        try:
            amount = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"invalid budget {value!r}: expected US dollars, e.g. 50 or 12.5") from None
        if not 0 <= amount <= MAX_BUDGET_USD:
            raise ValueError(f"invalid budget {value!r}: between 0 and {MAX_BUDGET_USD:,.0f} US dollars")
        return amount
    if name in LIMIT_FIELDS:
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise ValueError(f"invalid {name} {value!r}: a positive whole number (none clears it)")
        return int(text)
    raise ValueError(f"unknown setting {name!r}")


def validate_group_name(name: str) -> str:
    if not isinstance(name, str) or not _GROUP_RE.match(name):
        raise ValueError(f"invalid group name {name!r}: use 1-64 characters from letters, digits and . _ -")
    return name


def _models(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(p for p in text.split(",") if p)


def _limits(row: tuple[Any, ...]) -> Limits:
    return Limits(*(None if v is None else int(v) for v in row))


# --------------------------------------------------------------------------- reads


def load_policy(conn: duckdb.DuckDBPyConnection) -> Policy:
    groups = {name: GroupPolicy(budget, _models(models)) for name, budget, models in conn.execute(
        "SELECT name, budget_usd, models FROM aigw_groups").fetchall()}
    membership: dict[str, list[str]] = {}
    for group_name, user_id in conn.execute(
            "SELECT group_name, user_id::VARCHAR FROM aigw_group_members ORDER BY group_name").fetchall():
        membership.setdefault(user_id, []).append(group_name)
    users = {}
    for user_id, name, budget, rpm, tpm, streams, models in conn.execute(
            "SELECT u.id::VARCHAR, u.name, l.budget_usd, l.rpm, l.tpm, l.max_streams, l.models "
            "FROM users u LEFT JOIN aigw_user_limits l ON l.user_id = u.id").fetchall():
        users[user_id] = UserPolicy(name, _limits((rpm, tpm, streams)), budget, _models(models),
                                    tuple(membership.get(user_id, ())))
    keys = {key_id: KeyPolicy(_limits((rpm, tpm, streams)), _models(models)) for key_id, rpm, tpm, streams, models
            in conn.execute("SELECT key_id, rpm, tpm, max_streams, models FROM aigw_key_limits").fetchall()}
    return Policy(users, groups, keys)


def spend_by_user(conn: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> dict[str, float]:
    """Recorded cost per user of the token rows created in [start, end) on the organisation's keys."""
    rows = conn.execute(
        "SELECT i.initiator_id::VARCHAR, sum(t.cost_usd) FROM aibridge_token_usages t "
        "JOIN aibridge_interceptions i ON i.id = t.interception_id "
        "WHERE t.created_at >= ?::TIMESTAMPTZ AND t.created_at < ?::TIMESTAMPTZ AND t.cost_usd IS NOT NULL "
        "AND i.credential_kind = 'centralized' "  # a user's own key (BYOK) is not the organisation's spend
        "GROUP BY 1", [start.isoformat(), end.isoformat()]).fetchall()
    return {user_id: float(total) for user_id, total in rows}


def _settings(names: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    return {n: v for n, v in zip(names, row, strict=True) if v is not None}


def list_users(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every user with their own settings, groups and number of active keys."""
    policy = load_policy(conn)
    active = dict(conn.execute(
        "SELECT user_id::VARCHAR, count(*) FROM api_keys WHERE revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now()) GROUP BY 1").fetchall())
    own = {user_id: _settings(USER_FIELDS, row) for user_id, *row in conn.execute(
        "SELECT user_id::VARCHAR, budget_usd, rpm, tpm, max_streams, models FROM aigw_user_limits").fetchall()}
    return sorted(({"user": u.name, **own.get(user_id, {}), "groups": list(u.groups),
                    "active_keys": int(active.get(user_id, 0))} for user_id, u in policy.users.items()),
                  key=lambda r: r["user"])


def list_groups(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    members: dict[str, list[str]] = {}
    for group_name, user in conn.execute(
            "SELECT m.group_name, u.name FROM aigw_group_members m JOIN users u ON u.id = m.user_id "
            "ORDER BY u.name").fetchall():
        members.setdefault(group_name, []).append(user)
    return [{"group": name, **_settings(GROUP_FIELDS, (budget, models)), "members": members.get(name, [])}
            for name, budget, models in conn.execute(
                "SELECT name, budget_usd, models FROM aigw_groups ORDER BY name").fetchall()]


def budgets(conn: duckdb.DuckDBPyConnection, policy_name: str, period: str,
            now: datetime | None = None) -> dict[str, Any]:
    """Spend against budget per user with a budget, for the current period."""
    now = now or datetime.now(UTC)
    start, end = period_bounds(period, now)
    policy = load_policy(conn)
    spend = spend_by_user(conn, start, end)
    rows = []
    for user_id, user in sorted(policy.users.items(), key=lambda item: item[1].name):
        amount, source = policy.budget(user_id, policy_name)
        if amount is None:
            continue
        spent = spend.get(user_id, 0.0)
        rows.append({"user": user.name, "budget_usd": amount, "source": source, "spend_usd": round(spent, 6),
                     "remaining_usd": round(max(0.0, amount - spent), 6), "over": spent >= amount})
    return {"period": period, "period_start": start.isoformat(), "resets_at": end.isoformat(), "users": rows}


# --------------------------------------------------------------------------- writes


def _user_id(conn: duckdb.DuckDBPyConnection, user: str) -> str:
    row = conn.execute("SELECT id::VARCHAR FROM users WHERE name = ? ORDER BY created_at, id LIMIT 1",
                       [validate_user_name(user)]).fetchone()
    if row is None:
        raise LookupError(f"no user {user!r} (users appear with their first key, or with `aigw users add`)")
    return row[0]


def _upsert(conn: duckdb.DuckDBPyConnection, table: str, key_col: str, key: str, cast: str,
            changes: dict[str, Any], allowed: tuple[str, ...], extra: dict[str, Any] | None = None) -> None:
    values = {name: parse_field(name, value) for name, value in changes.items() if name in allowed}
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} (expected {', '.join(allowed)})")
    values.update(extra or {})
    if not values:
        return
    # Update, else insert: no ON CONFLICT, which needs a PRIMARY KEY that a DuckLake cannot have.
    updates = ", ".join(f"{c} = ?" for c in values)
    cols = ", ".join(values)
    marks = ", ".join("?" for _ in values)

    def write(cur: duckdb.DuckDBPyConnection) -> None:
        row = cur.execute(f"UPDATE {table} SET {updates} WHERE {key_col} = ?{cast}", [*values.values(), key]).fetchone()
        if not (row and row[0]):
            cur.execute(f"INSERT INTO {table} ({key_col}, {cols}) VALUES (?{cast}, {marks})", [key, *values.values()])

    _serialised(conn, write)


def _serialised(conn: duckdb.DuckDBPyConnection, write: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
    """Run a check-then-write in a transaction that first updates the schema row. On a DuckLake (no unique
    constraints; replicas and the CLI write at once) the second of two such commits is refused as a
    conflict and runs again, now seeing the first one's row; on a DuckDB file it costs one tiny update."""
    def run(cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute("UPDATE aigw_schema SET version = version")
        write(cur)

    retry_conflicts(conn, run)


def set_user(conn: duckdb.DuckDBPyConnection, user: str, changes: dict[str, Any], create: bool = False) -> None:
    """Set (or, with None, clear) a user's own budget, limits and model allowlist."""
    user_id = ensure_user(conn, user) if create else _user_id(conn, user)
    _upsert(conn, "aigw_user_limits", "user_id", user_id, "::UUID", changes, USER_FIELDS,
            {"updated_at": datetime.now(UTC)})


def set_key(conn: duckdb.DuckDBPyConnection, key_id: str, changes: dict[str, Any]) -> None:
    if conn.execute("SELECT 1 FROM api_keys WHERE id = ?", [key_id]).fetchone() is None:
        raise LookupError(f"no key {key_id!r}")
    _upsert(conn, "aigw_key_limits", "key_id", key_id, "", changes, KEY_FIELDS)


def create_group(conn: duckdb.DuckDBPyConnection, name: str, changes: dict[str, Any]) -> None:
    validate_group_name(name)
    if conn.execute("SELECT 1 FROM aigw_groups WHERE name = ?", [name]).fetchone() is not None:
        raise ValueError(f"group {name!r} exists (change it with `aigw groups set`)")
    _upsert(conn, "aigw_groups", "name", name, "", changes, GROUP_FIELDS, {"created_at": datetime.now(UTC)})


def set_group(conn: duckdb.DuckDBPyConnection, name: str, changes: dict[str, Any]) -> None:
    if conn.execute("SELECT 1 FROM aigw_groups WHERE name = ?", [name]).fetchone() is None:
        raise LookupError(f"no group {name!r}")
    _upsert(conn, "aigw_groups", "name", name, "", changes, GROUP_FIELDS)


def delete_group(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    if conn.execute("SELECT 1 FROM aigw_groups WHERE name = ?", [name]).fetchone() is None:
        raise LookupError(f"no group {name!r}")
    conn.execute("DELETE FROM aigw_group_members WHERE group_name = ?", [name])
    conn.execute("DELETE FROM aigw_groups WHERE name = ?", [name])


def add_member(conn: duckdb.DuckDBPyConnection, user: str, group: str) -> None:
    """Put a user (created if new, so budgets can be set before their first key) in a group."""
    if conn.execute("SELECT 1 FROM aigw_groups WHERE name = ?", [group]).fetchone() is None:
        raise LookupError(f"no group {group!r} (create it with `aigw groups create {group}`)")
    user_id = ensure_user(conn, user)

    def write(cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute("INSERT INTO aigw_group_members (group_name, user_id, added_at) SELECT ?, ?::UUID, ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM aigw_group_members WHERE group_name = ? AND user_id = ?::UUID)",
                    [group, user_id, datetime.now(UTC), group, user_id])

    _serialised(conn, write)


def remove_member(conn: duckdb.DuckDBPyConnection, user: str, group: str) -> None:
    user_id = _user_id(conn, user)
    if conn.execute("DELETE FROM aigw_group_members WHERE group_name = ? AND user_id = ?::UUID RETURNING 1",
                    [group, user_id]).fetchone() is None:
        raise LookupError(f"user {user!r} is not in group {group!r}")
