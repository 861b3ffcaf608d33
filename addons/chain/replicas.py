"""Addons for replicas sharing a DuckLake (docs/SCALING.md): what another replica changed reaches this
one within a second, a replica that died has its open interceptions ended by another, and the lake's
upkeep runs on one replica at a time. All of it off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from addons.chain.auth import KeyCache
from addons.chain.governance import Governance
from addons.settings.durations import option_seconds
from addons.sinks.recorder import Recorder
from addons.store import governance as governance_store
from addons.store import keys as keystore
from addons.store import lake
from addons.store.recovery import recover_open_interceptions
from addons.store.rollup import refresh as refresh_rollup

log = logging.getLogger("aigw.replicas")
T = TypeVar("T")


class LakeSync:
    """Each on a schedule of its own, so that one slow round never delays the others: reloads keys (new,
    revoked, expired) every `interval` seconds and the governance policy as often, so that keys and
    limits changed through any replica or the CLI apply on all of them; renews this replica's heartbeat
    (a lease named after it) and ends the open interceptions of replicas whose heartbeat expired
    (killed, or scaled away never to return under the same name)."""

    def __init__(self, recorder: Recorder, keys: KeyCache, governance: Governance, holder: str,
                 interval: float = 1.0) -> None:
        self.recorder = recorder
        self.keys = keys
        self.governance = governance
        self.holder = holder
        self.interval = interval
        self.replica_timeout = 60.0
        self.tasks: list[asyncio.Task[None]] = []
        self.failing = False
        self.loaded_keys: dict[str, Any] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_lake_replica_timeout", str, "60s",
                          "A replica whose heartbeat is older than this is gone: another replica ends the "
                          "interceptions it left open (status failed).")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        if "aigw_lake_replica_timeout" in updated:
            self.replica_timeout = option_seconds(ctx.options.aigw_lake_replica_timeout,
                                                  "aigw_lake_replica_timeout", example="60s")

    def running(self) -> None:
        if not self.tasks:
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self.every(lambda: self.interval, self.reload_keys)),
                          loop.create_task(self.every(lambda: self.interval, self.reload_policy)),
                          loop.create_task(self.every(lambda: self.replica_timeout / 3, self.heartbeat))]

    def done(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    @staticmethod
    async def every(period: Callable[[], float], work: Callable[[], Awaitable[None]]) -> None:
        """`work` at a fixed rate (a round that took longer starts the next at once)."""
        while True:
            started = time.monotonic()
            await work()
            await asyncio.sleep(max(0.0, period() - (time.monotonic() - started)))

    async def reload_keys(self) -> None:
        keys = await self._read(keystore.load_keys)
        if keys is not None and keys != self.loaded_keys:  # with --workers, each replacement goes to every worker
            self.keys.replace(keys)
            self.loaded_keys = keys

    async def reload_policy(self) -> None:
        policy = await self._read(governance_store.load_policy)
        if policy is not None and policy != self.governance.policy:
            self.governance.replace_policy(policy)

    async def _read(self, fn: Callable[[Any], T]) -> T | None:
        try:
            result = await asyncio.to_thread(self._on_cursor, fn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lake is down: keep serving with what is loaded
            if not self.failing:
                log.warning("cannot reload keys and limits from the lake (%s); keeping the loaded ones", exc)
            self.failing = True
            return None
        if self.failing:
            log.info("keys and limits reload from the lake again")
        self.failing = False
        return result

    async def heartbeat(self) -> None:
        """Renew this replica's heartbeat, then end what expired replicas left open; never raises."""
        try:
            ended = await asyncio.to_thread(self._on_cursor, self._heartbeat)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("replica heartbeat failed (retrying): %s", exc)
            return
        for replica, n in ended.items():
            log.warning("replica %s stopped sending heartbeats: ended %d interception(s) it left open", replica, n)

    def _heartbeat(self, conn: Any) -> dict[str, int]:
        lake.take_lease(conn, lake.REPLICA_LEASE + self.holder, self.holder, self.replica_timeout)
        ended: dict[str, int] = {}
        for replica in lake.expired_replicas(conn):
            n = lake.retry_conflicts(conn, lambda cur, r=replica: recover_open_interceptions(
                cur, datetime.now(UTC), replica=r), attempts=10)
            lake.forget_replica(conn, replica)
            if n:
                ended[replica] = n
        return ended


    def _on_cursor(self, fn: Callable[[Any], T]) -> T:
        """Run `fn` on a cursor of its own (a thread): not queued behind the writer's batches."""
        conn = self.recorder.conn
        if conn is None:
            raise RuntimeError("the database is not open")
        cur = conn.cursor()
        try:
            return fn(cur)
        finally:
            cur.close()


class LakeMaintenance:
    """Every `aigw_lake_maintenance_interval`, the replica holding the `maintenance` lease rolls closed
    days up (addons/store/rollup.py) and compacts the lake (flush inlined rows, merge small files,
    expire old snapshots); the others skip. On a cursor of its own, beside the writer."""

    LEASE = "maintenance"

    def __init__(self, recorder: Recorder, holder: str) -> None:
        self.recorder = recorder
        self.holder = holder
        self.interval = 600.0
        self.keep_snapshots = 7 * 86400.0
        self.task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_lake_maintenance_interval", str, "10m",
                          "Time between DuckLake upkeeps (daily rollup, flush inlined rows, merge small files, "
                          "expire snapshots); one replica at a time runs them.")
        loader.add_option("aigw_lake_keep_snapshots", str, "7d",
                          "How long DuckLake snapshots (time travel) are kept before the upkeep expires them.")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        if "aigw_lake_maintenance_interval" in updated:
            self.interval = option_seconds(ctx.options.aigw_lake_maintenance_interval,
                                           "aigw_lake_maintenance_interval")
        if "aigw_lake_keep_snapshots" in updated:
            self.keep_snapshots = option_seconds(ctx.options.aigw_lake_keep_snapshots, "aigw_lake_keep_snapshots")

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
        """One upkeep if this replica holds the lease; never raises. True: it ran."""
        conn = self.recorder.conn
        if conn is None:
            return False
        try:
            return await asyncio.to_thread(self._upkeep, conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if lake.is_conflict(exc):  # a replica's batch committed first: nothing is lost, next round
                log.info("lake maintenance gave way to a concurrent commit; next round in %.0fs", self.interval)
            else:
                log.exception("lake maintenance failed; retrying in %.0fs", self.interval)
            return False

    def _upkeep(self, conn: Any) -> bool:
        cur = conn.cursor()
        try:
            if not lake.take_lease(cur, self.LEASE, self.holder, self.interval * 1.5 + 60):
                return False
            days = refresh_rollup(conn)
            lake.maintain(cur, self.keep_snapshots)
        finally:
            cur.close()
        log.info("lake maintenance done: %d day(s) rolled up, inlined rows flushed, small files merged, "
                 "old snapshots expired", days)
        return True
