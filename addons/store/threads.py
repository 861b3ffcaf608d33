"""Thread linking: which earlier interception a new one continues.

A request that carries the result of a tool call (its `correlating_tool_call_id`)
continues the interception that recorded that call: that one is its
`thread_parent_id`, and the parent's root (or the parent itself) its
`thread_root_id`. The writer thread keeps the recent links in size-bounded maps
and looks up what they miss (e.g. after a restart) in the database, once per batch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import duckdb

from addons.flow.records import InterceptionStart, Record, ToolUsageRecord
from addons.store.bulk import dumps

log = logging.getLogger("aigw.store")

THREAD_MAP_SIZE = 50_000  # entries per map; a miss costs one database lookup on the writer thread
_MISSING = object()

_SQL_FIND_CALLS = (
    "SELECT t.provider_tool_call_id, t.interception_id::VARCHAR, i.id IS NOT NULL, "
    "i.thread_root_id::VARCHAR "
    "FROM aibridge_tool_usages AS t LEFT JOIN aibridge_interceptions AS i ON i.id = t.interception_id "
    "WHERE t.provider_tool_call_id IN (SELECT UNNEST(?::JSON::VARCHAR[])) "
    "QUALIFY row_number() OVER (PARTITION BY t.provider_tool_call_id ORDER BY t.created_at DESC) = 1"
)
_SQL_FIND_ROOTS = (
    "SELECT id::VARCHAR, thread_root_id::VARCHAR FROM aibridge_interceptions "
    "WHERE id IN (SELECT try_cast(u AS UUID) FROM (SELECT UNNEST(?::JSON::VARCHAR[]) AS u))"
)


class Bounded:
    """A size-bounded map that forgets the least recently used entry."""

    __slots__ = ("_cap", "_d")

    def __init__(self, cap: int) -> None:
        self._d: OrderedDict[str, str | None] = OrderedDict()
        self._cap = cap

    def __contains__(self, key: str) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str, default: Any = None) -> Any:
        d = self._d
        if key in d:
            d.move_to_end(key)
            return d[key]
        return default

    def pop(self, key: str) -> None:
        self._d.pop(key, None)

    def set(self, key: str, value: str | None) -> None:
        d = self._d
        d[key] = value
        d.move_to_end(key)
        if len(d) > self._cap:
            d.popitem(last=False)


class ThreadLinks:
    """The links the writer thread knows: tool call -> interception, interception -> thread root."""

    def __init__(self, size: int = THREAD_MAP_SIZE, *, shared: bool = False) -> None:
        """`shared`: a lake other replicas write to (a tool call not found may be recorded any moment)."""
        self._shared = shared
        # provider_tool_call_id -> interception that recorded it (None: known absent)
        self._tool_owner = Bounded(size)
        # interception id -> its thread_root_id (None: it is a root itself), for interceptions that
        # recorded tool calls (only those can be parents); misses are looked up in the database.
        self._roots = Bounded(size)
        # the same for interceptions started and not yet ended, until they record a tool call
        self._open_roots = Bounded(size)

    def started(self, r: InterceptionStart) -> tuple[str | None, str | None]:
        """The (thread_parent_id, thread_root_id) of an interception that starts now."""
        parent = root = None
        cid = r.correlating_tool_call_id
        if cid:
            parent = self._tool_owner.get(cid)
            if parent is not None and parent != r.id:
                parent_root = self._roots.get(parent, self._open_roots.get(parent, _MISSING))
                root = parent if parent_root is _MISSING or parent_root is None else parent_root
            else:
                parent = None
        self._open_roots.set(r.id, root)
        return parent, root

    def tool_call(self, r: ToolUsageRecord) -> None:
        """An interception recorded a tool call: a later request may continue it."""
        if not r.provider_tool_call_id:
            return
        owner = r.interception_id
        self._tool_owner.set(r.provider_tool_call_id, owner)
        if owner not in self._roots and owner in self._open_roots:
            self._roots.set(owner, self._open_roots.get(owner))

    def ended(self, interception_id: str) -> None:
        self._open_roots.pop(interception_id)

    def prefetch(self, cur: duckdb.DuckDBPyConnection | None, records: list[Record]) -> None:
        """Load from the database what the in-memory maps miss for these records' starts."""
        need_calls, need_roots = self._misses(records)
        if not need_calls and not need_roots:
            return
        assert cur is not None
        try:
            if need_calls:
                need_roots |= self._load_calls(cur, need_calls)
            need_roots = {p for p in need_roots if p not in self._roots}
            if need_roots:
                found_roots = dict(cur.execute(_SQL_FIND_ROOTS, [dumps(sorted(need_roots))]).fetchall())
                for parent in need_roots:
                    self._roots.set(parent, found_roots.get(parent))
        except Exception:
            log.warning("looking up thread parents failed; leaving them unlinked", exc_info=True)

    def _misses(self, records: list[Record]) -> tuple[set[str], set[str]]:
        """Tool calls whose owner, and parents whose root, neither the maps nor the batch know."""
        tool_owner = self._tool_owner
        need_calls: set[str] = set()
        need_roots: set[str] = set()
        seen_calls: set[str] = set()
        seen_starts: set[str] = set()
        for r in records:
            match r:
                case ToolUsageRecord():
                    seen_calls.add(r.provider_tool_call_id)
                case InterceptionStart():
                    seen_starts.add(r.id)
                    cid = r.correlating_tool_call_id
                    if not cid or cid in seen_calls:
                        continue
                    if cid not in tool_owner:
                        need_calls.add(cid)
                        continue
                    parent = tool_owner.get(cid)
                    if (parent is not None and parent not in self._roots and parent not in self._open_roots
                            and parent not in seen_starts):
                        need_roots.add(parent)
        return need_calls, need_roots

    def _load_calls(self, cur: duckdb.DuckDBPyConnection, need_calls: set[str]) -> set[str]:
        """Record who owns these tool calls; returns the owners whose root is still unknown."""
        need_roots: set[str] = set()
        for cid, parent, parent_exists, parent_root in cur.execute(
                _SQL_FIND_CALLS, [dumps(sorted(need_calls))]).fetchall():
            self._tool_owner.set(cid, parent)
            need_calls.discard(cid)
            if parent in self._roots:
                continue
            if parent_exists:
                self._roots.set(parent, parent_root)
            else:
                need_roots.add(parent)
        # Not recorded anywhere: remember that, unless another replica may record it any moment.
        for cid in () if self._shared else need_calls:
            self._tool_owner.set(cid, None)
        return need_roots
