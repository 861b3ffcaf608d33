"""Time and peak memory of the analysts' commands on a generated database (BENCHMARKS.md, "Analysts at scale").

    .venv/bin/python scripts/analysts_measure.py DIR/aibridge.duckdb [--http] [--repeat 1]

Each command runs once per repeat as a fresh `aigw` process (cold: new process,
new DuckDB instance; the OS page cache is whatever it is), started like the `aigw`
script (`python -m addons`) with the package's bytecode compiled first, as an install
has it (with PYTHONDONTWRITEBYTECODE a checkout would recompile every changed module
in every command). Wall time, CPU time
(user+sys) and peak RSS come from wait4()'s rusage of that child alone.

With --http a gateway is started on the database first, so the same commands go
through its API (`/api/v2/aibridge/...`); then the gateway's peak RSS (VmHWM) is
reported too, and a probe thread times `GET /healthz` every 50 ms while each command
runs: its worst latency shows whether analyst work ever stalls the event loop.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
AIGW = [sys.executable, "-m", "addons"]

QUERY = ("select model, count(*), sum(t.input_tokens) from aibridge_interceptions i "
         "join aibridge_token_usages t on t.interception_id = i.id group by 1 order by 1")


def commands(out: Path) -> list[tuple[str, list[str], str]]:
    """(label, aigw arguments, the API path the same command calls through a gateway)."""
    api = "/api/v2/aibridge"
    return [
        ("report --since 30d", ["report", "--since", "30d", "--out", str(out)], f"{api}/admin/report?since=30d"),
        ("sessions list", ["sessions", "list"], f"{api}/sessions?limit=50"),
        ("sessions list --user user042", ["sessions", "list", "--user", "user042"],
         f"{api}/sessions?limit=50&user=user042"),
        ("sessions list --since 1d", ["sessions", "list", "--since", "1d"], f"{api}/sessions?limit=50&since=1d"),
        ("interceptions list --limit 50", ["interceptions", "list", "--limit", "50"],
         f"{api}/interceptions?limit=50"),
        ("interceptions list --limit 50 (page 2)",
         ["interceptions", "list", "--limit", "50", "--after-id", "{cursor}"],
         f"{api}/interceptions?limit=50&after_id={{cursor}}"),
        ("interceptions list --limit 50 --user user042 --model gpt-5",
         ["interceptions", "list", "--limit", "50", "--user", "user042", "--model", "gpt-5"],
         f"{api}/interceptions?limit=50&user=user042&model=gpt-5"),
        ("query (model x tokens join)", ["query", QUERY], f"{api}/query"),
    ]


def env_for(db: Path, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CODER_", "AWS_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"NO_PROXY": "*", "CODER_AIBRIDGE_DB": str(db), "PYTHONPATH": str(REPO),
                "CODER_AIBRIDGE_PROVIDER_0_TYPE": "anthropic", "CODER_AIBRIDGE_PROVIDER_0_KEY": "sk-unused",
                "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": "http://127.0.0.1:9"})
    if port is not None:
        env["CODER_AIBRIDGE_LISTEN"] = f"127.0.0.1:{port}"
    return env


def measure(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*AIGW, *argv], env=env, cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"aigw {' '.join(argv)} failed: {stderr[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": stdout}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Probe(threading.Thread):
    """Times GET /healthz every 50 ms until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.worst, self.count = url, threading.Event(), 0.0, 0

    def run(self) -> None:
        with httpx.Client(trust_env=False, timeout=60) as client:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                client.get(self.url + "/healthz")
                self.worst = max(self.worst, time.perf_counter() - t0)
                self.count += 1
                self.stop.wait(0.05)


def vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def api_time(port: int | None, db: Path, path: str) -> float:
    token = json.loads((db.parent / "aibridge.gateway.json").read_text())["token"]
    headers = {"authorization": f"Bearer {token}"}
    t0 = time.perf_counter()
    if path.endswith("/query"):
        r = httpx.post(f"http://127.0.0.1:{port}{path}", json={"sql": QUERY}, headers=headers, trust_env=False,
                       timeout=120)
    else:
        r = httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, trust_env=False, timeout=120)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return round(elapsed, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path)
    ap.add_argument("--http", action="store_true", help="through a gateway started on the database")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", help="comma-separated command labels prefixes to run")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "addons")], check=True,
                   stdout=subprocess.DEVNULL)
    out = Path(tempfile.mkdtemp()) / "r.html"
    gateway = None
    port = free_port() if args.http else None
    env = env_for(args.db.resolve(), port)
    if args.http:
        log = open(args.db.parent / "gateway.log", "ab")
        gateway = subprocess.Popen([*AIGW, "serve", "-q"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise SystemExit("gateway did not start")
            time.sleep(0.2)
    results = []
    cursor = ""
    try:
        for label, argv, path in commands(out):
            if args.only and not any(label.startswith(p) for p in args.only.split(",")):
                continue
            argv = [a.replace("{cursor}", cursor) for a in argv]
            path = path.replace("{cursor}", cursor)
            for _ in range(args.repeat):
                probe = Probe(f"http://127.0.0.1:{port}") if gateway is not None else None
                if probe is not None:
                    probe.start()
                load = os.getloadavg()[0]
                r = measure(argv, env)
                if probe is not None:
                    probe.stop.set()
                    probe.join()
                    r["healthz_worst_ms"] = round(probe.worst * 1000, 1)
                    r["gateway_hwm_mb"] = round(vm(gateway.pid, "VmHWM"), 1)  # type: ignore[union-attr]
                    r["api_s"] = api_time(port, args.db, path)  # the endpoint alone, no CLI process
                r["load1"] = round(load, 2)
                stdout = str(r.pop("stdout"))
                if label == "interceptions list --limit 50":
                    cursor = next((ln.split()[-1] for ln in stdout.splitlines() if ln.startswith("more:")), "")
                results.append({"command": label, **r})
                print(json.dumps(results[-1]), flush=True)
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(60)


if __name__ == "__main__":
    main()
