"""Batch planning: a batch of records becomes at most one statement per table.

An interception started and ended in the same batch is written as one complete
row; an end whose start an earlier batch wrote becomes an UPDATE (several ends of
one interception compose into one merge patch). A prompt is recorded before its
response id is known: the interception's end fills it in, in this batch's row or
by an UPDATE of an earlier one. Thread links come from `threads.ThreadLinks`, the
cost of a token row from the `price` collaborator (addons/pricing).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple

import duckdb

from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    Record,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.pricing import Price
from addons.store import bulk
from addons.store.threads import THREAD_MAP_SIZE, Bounded, ThreadLinks

log = logging.getLogger("aigw.store")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch, as DuckDB's json_merge_patch applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _compose_patches(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One patch with the effect of applying `first`, then `second` (nulls kept)."""
    result = dict(first)
    for key, value in second.items():
        prev = result.get(key)
        if isinstance(value, dict) and isinstance(prev, dict):
            result[key] = _compose_patches(prev, value)
        else:
            result[key] = value
    return result


class _Started:
    """An interception started in this batch; its end, when in the same batch, completes the row."""

    __slots__ = ("ended_at", "metadata", "parent", "record", "root", "status")

    def __init__(self, record: InterceptionStart, parent: str | None, root: str | None,
                 metadata: dict[str, Any]) -> None:
        self.record = record
        self.parent = parent
        self.root = root
        self.metadata = metadata
        self.ended_at: datetime | None = None
        self.status: str | None = None

    def row(self) -> tuple[Any, ...]:
        return bulk.interception_row(self.record, self.parent, self.root, self.ended_at, self.status, self.metadata)


class _Prompt:
    """A prompt of this batch; a response id its interception's end brings fills it in."""

    __slots__ = ("record", "response_id")

    def __init__(self, record: PromptRecord) -> None:
        self.record = record
        self.response_id = record.provider_response_id

    def row(self) -> tuple[Any, ...]:
        r = self.record
        return bulk.prompt_row(r.interception_id, self.response_id, r.prompt, r.created_at)


class _End(NamedTuple):
    """The end of an interception an earlier batch started: an UPDATE."""

    ended_at: datetime
    status: str
    patch: dict[str, Any]


class Plan:
    __slots__ = ("ends", "interceptions", "prompt_ids", "prompts", "prompts_done", "thoughts", "tokens", "tools")

    def __init__(self) -> None:
        self.interceptions: list[_Started] = []
        self.tokens: list[tuple[Any, ...]] = []
        self.prompts: list[_Prompt] = []
        self.prompt_ids: list[tuple[str, str, str]] = []  # (interception, response id, prompt created_at)
        self.prompts_done: list[str] = []  # interceptions whose waiting prompt this plan settles
        self.tools: list[tuple[Any, ...]] = []
        self.thoughts: list[tuple[Any, ...]] = []
        self.ends: dict[str, _End] = {}

    def execute(self, cur: duckdb.DuckDBPyConnection) -> None:
        # Interceptions first, then their children, then ends of earlier batches.
        bulk.insert(cur, bulk.SQL_INTERCEPTIONS, [s.row() for s in self.interceptions])
        bulk.insert(cur, bulk.SQL_TOKENS, self.tokens)
        bulk.insert(cur, bulk.SQL_PROMPTS, [p.row() for p in self.prompts])
        bulk.insert(cur, bulk.SQL_TOOLS, self.tools)
        bulk.insert(cur, bulk.SQL_THOUGHTS, self.thoughts)
        bulk.insert(cur, bulk.SQL_ENDS, [(iid, *end) for iid, end in self.ends.items()])
        if self.prompt_ids:
            since = min(created for _, _, created in self.prompt_ids)
            ids = [(iid, rid) for iid, rid, _ in self.prompt_ids]
            cur.execute(bulk.SQL_PROMPT_IDS, [bulk.columns(ids), since])


class BatchPlanner:
    """Plans batches on the writer thread; keeps what links one batch to the next."""

    def __init__(self, price: Price | None = None, *, map_size: int = THREAD_MAP_SIZE,
                 replica: str | None = None) -> None:
        """`replica`: on a lake shared by replicas, stamped on each interception (a restart ends only its own)."""
        self._price = price
        self._replica = replica
        self.links = ThreadLinks(map_size, shared=replica is not None)
        # interception id -> created_at of its prompt, written before the response id was known
        self.open_prompts = Bounded(map_size)

    def plan(self, records: list[Record], cur: duckdb.DuckDBPyConnection | None) -> Plan:
        """`cur`: where thread links the maps miss are looked up."""
        self.links.prefetch(cur, records)
        plan = Plan()
        started: dict[str, _Started] = {}
        waiting: dict[str, _Prompt] = {}  # prompts of this batch still without a response id
        for r in records:
            match r:
                case ToolUsageRecord():
                    plan.tools.append(bulk.tool_row(r))
                    self.links.tool_call(r)
                case TokenUsageRecord():
                    plan.tokens.append(bulk.token_row(r, self._cost(r)))
                case PromptRecord():
                    prompt = _Prompt(r)
                    plan.prompts.append(prompt)
                    if r.provider_response_id is None:
                        waiting[r.interception_id] = prompt
                case InterceptionStart():
                    started[r.id] = self._started(r)
                    plan.interceptions.append(started[r.id])
                case InterceptionEnd():
                    self._ended(r, plan, started, waiting)
                case ThoughtRecord():
                    plan.thoughts.append(bulk.thought_row(r))
                case _:
                    raise TypeError(f"not a record: {type(r).__name__}")
        for iid, prompt in waiting.items():  # responses still running: filled in by their ends
            self.open_prompts.set(iid, bulk.ts(prompt.record.created_at))
        return plan

    def committed(self, plan: Plan) -> None:
        """`plan` is in the database: the prompts it settled no longer wait."""
        for iid in plan.prompts_done:
            self.open_prompts.pop(iid)

    def _cost(self, r: TokenUsageRecord) -> float | None:
        if self._price is None:
            return None
        try:
            return self._price(r)
        except Exception:
            log.debug("pricing %s/%s failed", r.provider, r.model, exc_info=True)
            return None

    def _started(self, r: InterceptionStart) -> _Started:
        metadata = dict(r.metadata) if r.metadata else {}
        if self._replica is not None:
            metadata["replica"] = self._replica
        if r.correlating_tool_call_id:
            metadata["correlating_tool_call_id"] = r.correlating_tool_call_id
        parent, root = self.links.started(r)
        return _Started(r, parent, root, metadata)

    def _ended(self, r: InterceptionEnd, plan: Plan, started: dict[str, _Started],
               waiting: dict[str, _Prompt]) -> None:
        self.links.ended(r.id)
        response_id = r.metadata.get("response_id") if r.metadata else None
        prompt = waiting.pop(r.id, None)
        if prompt is not None:
            prompt.response_id = response_id
        else:
            created = self.open_prompts.get(r.id)
            if created is not None:
                plan.prompts_done.append(r.id)
                if response_id:
                    plan.prompt_ids.append((r.id, response_id, created))
        start = started.get(r.id)
        if start is not None:
            start.ended_at = r.ended_at
            start.status = r.status
            if r.metadata:
                start.metadata = merge_patch(start.metadata, r.metadata)
            return
        prev = plan.ends.get(r.id)
        patch = dict(r.metadata) if r.metadata else {}
        if prev is not None:
            patch = _compose_patches(prev.patch, patch)
        plan.ends[r.id] = _End(r.ended_at, r.status, patch)
