"""Child processes: start, stop, and sample a process tree's RSS and CPU from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            except OSError:
                continue
            out += [int(c) for c in text.split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children_of(p)
    return pids


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


class Proc:
    """A started child process whose output goes to a log file."""

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path,
                 stdout_pipe: bool = False) -> None:
        self.name = name
        self.log_path = log
        self._log: IO[bytes] = open(log, "ab")
        self.popen = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log, stderr=self._log, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        return tree(self.pid) if self.alive() else []

    def tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 20) -> int | None:
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)  # its own session: only its children
                self.popen.wait()
            except ProcessLookupError:
                pass
        # Children it left behind (e.g. a server's workers) are in its own process group.
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return self.popen.returncode


def machine_busy_seconds() -> float:
    """CPU-seconds all CPUs spent busy since boot (from /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


class Sampler:
    """Samples a set of process trees (RSS, CPU) in a thread while a measurement runs."""

    def __init__(self, procs: dict[str, Proc | None], interval: float = 0.25) -> None:
        self.procs = {k: v for k, v in procs.items() if v is not None}
        self.interval = interval
        self.rss: dict[str, list[int]] = {k: [] for k in self.procs}
        self._cpu0: dict[str, float] = {}
        self._machine0 = 0.0
        self.machine_cpu_pct = 0.0  # all processes on the machine, 100 = one CPU
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.result: dict[str, dict[str, Any]] = {}

    def _sample(self) -> None:
        for name, proc in self.procs.items():
            self.rss[name].append(rss_bytes(proc.pids()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpu0 = {k: cpu_seconds(p.pids()) for k, p in self.procs.items()}
        self._machine0 = machine_busy_seconds()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self.machine_cpu_pct = round(100 * (machine_busy_seconds() - self._machine0) / elapsed, 1)
        mb = 1 / (1024 * 1024)
        for name, proc in self.procs.items():
            cpu = cpu_seconds(proc.pids()) - self._cpu0[name]
            rss = self.rss[name] or [0]
            self.result[name] = {
                "cpu_pct": round(100 * cpu / elapsed, 1),
                "rss_start_mb": round(rss[0] * mb, 1),
                "rss_max_mb": round(max(rss) * mb, 1),
                "rss_end_mb": round(rss[-1] * mb, 1),
                "rss_mid_mb": round(rss[len(rss) // 2] * mb, 1),
            }
