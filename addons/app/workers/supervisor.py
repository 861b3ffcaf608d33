"""The primary's worker processes: started, restarted when one dies, signalled and awaited when the gateway
stops."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from addons.app.workers.hub import Hub
from addons.app.workers.prometheus import SummedMetrics
from addons.chain.auth import KeyCache
from addons.settings.config import Settings

log = logging.getLogger("aigw.workers")

RESTART_DELAY = 1.0  # at least this long between two starts of the same worker


class Supervisor:
    """In the primary: starts and restarts the workers; its `hub` takes their records and answers their calls."""

    def __init__(self, settings: Settings, sets: list[str], quiet: bool, recorder: Any, keys: KeyCache) -> None:
        self.settings = settings
        self.sets = sets
        self.quiet = quiet
        self.metrics = SummedMetrics()
        self.directory = Path(tempfile.mkdtemp(prefix="aigw-workers-"))  # 0700
        self.path = self.directory / "channel.sock"
        self.hub = Hub(settings, recorder, keys, self.metrics, self.path, lambda: self.stopping)
        self.processes: dict[int, Any] = {}
        self.stopping = False
        self.lock = threading.Lock()
        self.mp = multiprocessing.get_context("spawn")

    def registry(self) -> CollectorRegistry:
        """What `/metrics` serves: the primary's metrics and every worker's, summed."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.metrics)  # type: ignore[arg-type]
        return registry

    def start(self, admin: Any, governance: Any) -> None:
        """Listen on the channel, start the workers and the state broadcast (on the primary's loop)."""
        self.hub.start(admin, governance)
        for worker in range(1, self.settings.workers):
            self._spawn(worker)
        threading.Thread(target=self._watch, name="aigw-workers-watch", daemon=True).start()

    def signal(self, signum: int) -> None:
        """Pass a stop signal on to every worker (they drain on their own)."""
        with self.lock:  # no worker is started after this
            self.stopping = True
            processes = list(self.processes.values())
        for process in processes:
            if process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    def close(self, timeout: float) -> None:
        """Wait for the workers to end (they were signalled), then for their last records to be taken.

        Called after the primary's master stopped, before its recorder flushes."""
        with self.lock:
            self.stopping = True
            processes = list(self.processes.values())
        self.hub.stop_broadcast()
        deadline = time.monotonic() + timeout
        for process in processes:
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker (pid %s) did not stop in time: killing it", process.pid)
                process.kill()
                process.join(5)
        self.hub.close(deadline)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _spawn(self, worker: int) -> None:
        process = self.mp.Process(target=child_main, name=f"aigw-worker-{worker}",
                                  args=(self.settings, self.sets, worker, str(self.path), self.quiet))
        process.start()
        self.processes[worker] = process
        log.info("started worker %d (pid %s)", worker, process.pid)

    def _watch(self) -> None:
        """Restart a worker that exits while the gateway is not stopping."""
        started = {w: time.monotonic() for w in self.processes}
        while not self.stopping:
            sentinels = {p.sentinel: w for w, p in self.processes.items()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                worker = sentinels[sentinel]
                process = self.processes[worker]
                process.join(1)  # the sentinel fires as the process exits; reap it
                if self.stopping:
                    return
                log.error("worker %d (pid %s) exited with code %s: starting a new one", worker, process.pid,
                          process.exitcode)
                time.sleep(max(0.0, started[worker] + RESTART_DELAY - time.monotonic()))
                with self.lock:
                    if self.stopping:
                        return
                    self._spawn(worker)
                started[worker] = time.monotonic()


def child_main(settings: Settings, sets: list[str], worker: int, path: str, quiet: bool) -> None:
    """A worker process (multiprocessing spawn target): a gateway that records through the primary."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the primary only, which passes it on once
    from addons.app.serve import run_worker

    raise SystemExit(run_worker(settings, sets, worker, path, quiet))
