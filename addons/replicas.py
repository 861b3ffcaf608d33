"""Addons for replicas sharing a DuckLake (docs/SCALING.md): what another replica changed reaches this
one within a second, and the lake's upkeep runs on one replica at a time.

Both work on the writer thread (`RecordWriter.call`), off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from addons.auth import KeyCache
from addons.config import ConfigError, parse_duration
from addons.governance import Governance
from addons.store import governance as governance_store
from addons.store import keys as keystore
from addons.store import lake

log = logging.getLogger("aigw.replicas")


class LakeSync:
    """Reloads keys (new, revoked, expired) and the governance policy every `interval` seconds: keys and
    limits changed through any replica or the CLI apply on all of them."""

    def __init__(self, writer: Any, keys: KeyCache, governance: Governance, interval: float = 1.0) -> None:
        self.writer = writer
        self.keys = keys
        self.governance = governance
        self.interval = interval
        self.task: asyncio.Task[None] | None = None
        self.failing = False
        self.loaded_keys: dict[str, Any] | None = None

    def running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.loop())

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.reload()

    async def reload(self) -> None:
        try:
            keys, policy = await asyncio.to_thread(self.writer.call, _load, 10.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lake is down: keep serving with what is loaded
            if not self.failing:
                log.warning("cannot reload keys and limits from the lake (%s); keeping the loaded ones", exc)
            self.failing = True
            return
        if self.failing:
            log.info("keys and limits reload from the lake again")
        self.failing = False
        # Only what changed: with --workers, each replacement is sent to every worker.
        if keys != self.loaded_keys:
            self.keys.replace(keys)
            self.loaded_keys = keys
        if policy != self.governance.policy:
            self.governance.replace_policy(policy)


def _load(conn: Any) -> tuple[Any, Any]:
    return keystore.load_keys(conn), governance_store.load_policy(conn)


class LakeMaintenance:
    """Compaction and snapshot expiry every `aigw_lake_maintenance_interval`, by whichever replica holds
    the `maintenance` lease (the others skip)."""

    LEASE = "maintenance"

    def __init__(self, writer: Any, holder: str) -> None:
        self.writer = writer
        self.holder = holder
        self.interval = 3600.0
        self.keep_snapshots = 7 * 86400.0
        self.task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_lake_maintenance_interval", str, "1h",
                          "Time between DuckLake compactions (flush inlined rows, merge small files, expire "
                          "snapshots); one replica at a time runs them.")
        loader.add_option("aigw_lake_keep_snapshots", str, "7d",
                          "How long DuckLake snapshots (time travel) are kept before compaction expires them.")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx, exceptions

        for name in ("aigw_lake_maintenance_interval", "aigw_lake_keep_snapshots"):
            if name in updated:
                try:
                    value = parse_duration(getattr(ctx.options, name), name)
                except ConfigError as e:
                    raise exceptions.OptionsError(str(e)) from None
                if value is None:
                    raise exceptions.OptionsError(f"{name} must be a positive duration, e.g. 1h")
                if name == "aigw_lake_maintenance_interval":
                    self.interval = value.total_seconds()
                else:
                    self.keep_snapshots = value.total_seconds()

    def running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.loop())

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.run_once()

    async def run_once(self) -> bool:
        """One compaction if this replica holds the lease; never raises. True: it ran."""
        ttl = self.interval * 1.5
        try:
            if not await asyncio.to_thread(self.writer.call,
                                           lambda conn: lake.take_lease(conn, self.LEASE, self.holder, ttl)):
                return False
            await asyncio.to_thread(self.writer.call, lambda conn: lake.maintain(conn, self.keep_snapshots), 3600.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lake maintenance failed; retrying in %.0fs", self.interval)
            return False
        log.info("lake maintenance done (inlined rows flushed, small files merged, old snapshots expired)")
        return True
