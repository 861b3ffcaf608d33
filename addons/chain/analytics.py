"""Addons for analysts: the read-only snapshot, and the report's daily rollup kept current.

DuckDB allows one writing process, so the DuckDB CLI, Jupyter or a BI tool
open a consistent copy instead: `<db dir>/snapshot/aibridge.duckdb` plus
Parquet files partitioned by day, refreshed every `aigw_snapshot_interval`
seconds and on demand (`aigw snapshot`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from mitmproxy import ctx

from addons.settings.config import Settings
from addons.sinks.recorder import Recorder
from addons.store.rollup import refresh as refresh_rollup
from addons.store.snapshot import write_snapshot

log = logging.getLogger("aigw.snapshot")

DEFAULT_INTERVAL = 300


def snapshot_dir(settings: Settings) -> Path:
    return settings.db.parent / "snapshot"


class SnapshotPublisher:
    def __init__(self, settings: Settings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self.task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("aigw_snapshot_interval", int, DEFAULT_INTERVAL,
                          "Seconds between read-only snapshots for external tools (0: only on demand).")

    def running(self) -> None:
        if ctx.options.aigw_snapshot_interval > 0:
            self.task = asyncio.get_running_loop().create_task(self.loop())

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.aigw_snapshot_interval)
            await self.publish()

    async def publish(self) -> None:
        conn = self.recorder.conn
        if conn is None:
            return
        try:
            path = await asyncio.to_thread(write_snapshot, conn, snapshot_dir(self.settings))
        except Exception as e:
            log.warning("snapshot failed (the previous one is intact): %s", e)
        else:
            log.debug("snapshot written to %s", path)

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()


class RollupRefresher:
    """Rolls closed UTC days up in the background (addons/store/rollup.py), off the event loop and
    outside the writer thread, so every report (the CLI's on a read-only connection too) finds them
    ready instead of aggregating a month of rows. The first run after an upgrade rolls up history."""

    FIRST_DELAY = 30.0  # let start-up traffic settle first
    INTERVAL = 600.0

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.task: asyncio.Task[None] | None = None

    def running(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.loop())

    async def loop(self) -> None:
        await asyncio.sleep(self.FIRST_DELAY)
        while True:
            await self.refresh()
            await asyncio.sleep(self.INTERVAL)

    async def refresh(self) -> None:
        conn = self.recorder.conn
        if conn is None:
            return
        try:
            days = await asyncio.to_thread(refresh_rollup, conn)
        except Exception as e:
            log.warning("daily rollup refresh failed (reports compute from the tables): %s", e)
        else:
            log.debug("daily rollup covers %d closed day(s)", days)

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()
