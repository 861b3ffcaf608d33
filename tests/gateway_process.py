"""Run the real gateway as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
ANTHROPIC_PROVIDER_KEY = "sk-ant-api03-PROVIDER-SECRET-aaaaaaaaaaaaaaaa"
OPENAI_PROVIDER_KEY = "sk-proj-PROVIDER-SECRET-bbbbbbbbbbbbbbbbbbbb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The per-user aigw home of every gateway and CLI a test starts without naming one: never the real one.
_STATE_HOME = tempfile.mkdtemp(prefix="aigw-test-state-")


def clean_env(**extra: str) -> dict[str, str]:
    # OTEL_* too: a developer's collector settings would switch OpenTelemetry export on in every test.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "AWS_", "OTEL_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = "*"
    env["XDG_STATE_HOME"] = _STATE_HOME
    env.update(extra)
    return env


def provider_env(upstream_url: str) -> dict[str, str]:
    return {
        "CODER_AIBRIDGE_PROVIDER_0_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_0_KEY": ANTHROPIC_PROVIDER_KEY,
        "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": upstream_url,
        "CODER_AIBRIDGE_PROVIDER_1_TYPE": "openai",
        "CODER_AIBRIDGE_PROVIDER_1_KEY": OPENAI_PROVIDER_KEY,
        "CODER_AIBRIDGE_PROVIDER_1_BASE_URL": upstream_url + "/v1",
        "CODER_AIBRIDGE_PROVIDER_2_TYPE": "copilot",
        "CODER_AIBRIDGE_PROVIDER_2_BASE_URL": upstream_url,
        # Nothing listens there: upstream connection failures.
        "CODER_AIBRIDGE_PROVIDER_3_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_3_NAME": "dead",
        "CODER_AIBRIDGE_PROVIDER_3_KEY": ANTHROPIC_PROVIDER_KEY,
        "CODER_AIBRIDGE_PROVIDER_3_BASE_URL": f"http://127.0.0.1:{free_port()}",
        # Two keys: failover on 401/429.
        "CODER_AIBRIDGE_PROVIDER_4_TYPE": "openai",
        "CODER_AIBRIDGE_PROVIDER_4_NAME": "multi",
        "CODER_AIBRIDGE_PROVIDER_4_KEYS": "sk-first-key-0000000000000000,sk-second-key-000000000000000",
        "CODER_AIBRIDGE_PROVIDER_4_BASE_URL": upstream_url + "/v1",
    }


def start_proxy_gateway(workdir: Path, env: dict[str, str], ca_path: Path, ports: Sequence[int]) -> Gateway:
    """A started gateway that trusts the test CA and lets its proxy reach `ports` besides 80/443 (the
    fakes cannot listen on 443), with user alice's key as `user_key`."""
    gateway = Gateway(workdir, env, ["--set", f"ssl_verify_upstream_trusted_ca={ca_path}",
                                     "--set", f"aigw_proxy_allowed_ports=80,443,{','.join(map(str, ports))}"])
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    return gateway.start()


def aigw(args: Sequence[str], env: dict[str, str], cwd: Path, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "addons.cli", *args], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"aigw {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


class Gateway:
    def __init__(self, workdir: Path, env: dict[str, str], extra_args: Sequence[str] = (),
                 command: str = "serve") -> None:
        self.command = command  # "serve" or "web"
        self.workdir = workdir
        self.port = free_port()
        self.db = workdir / "data" / "aibridge.duckdb"
        self.env = {**env, "CODER_AIBRIDGE_HOME": str(workdir), "CODER_AIBRIDGE_DB": str(self.db),
                    "CODER_AIBRIDGE_LISTEN": f"127.0.0.1:{self.port}"}
        self.extra_args = list(extra_args)
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return aigw(args, self.env, self.workdir, check=check)

    def create_key(self, user: str, admin: bool = False) -> str:
        out = self.cli("keys", "create", "--user", user, "--json", *(["--admin"] if admin else []))
        return json.loads(out.stdout)["key"]

    def start(self) -> Gateway:
        self.log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "addons.cli", self.command, *self.extra_args], env=self.env, cwd=self.workdir,
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway did not become ready:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admin_token(self) -> str:
        data = json.loads((self.db.parent / "aibridge.gateway.json").read_text())
        return data["token"]

    def query(self, sql: str) -> list[dict[str, Any]]:
        response = httpx.post(self.url + "/api/v2/aibridge/query", json={"sql": sql}, timeout=30,
                              headers={"authorization": f"Bearer {self.admin_token()}"}, trust_env=False)
        assert response.status_code == 200, response.text
        data = response.json()
        return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]

    def wait_for(self, sql: str, done: Callable[[list[dict[str, Any]]], bool] = bool,
                 timeout: float = 30) -> list[dict[str, Any]]:
        """Poll until the recorder has written what the test expects (records are written in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(sql)
            if done(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def settled_count(gw: Gateway) -> int:
    """Interceptions so far, once every earlier one is written and ended (so the next one recorded is
    ours): the recorder writes in batches, so the count must hold still across a flush interval."""
    sql = "select count(*) as n, count(ended_at) as ended from aibridge_interceptions"
    previous = -1
    while True:
        n = gw.wait_for(sql, lambda r: r[0]["n"] == r[0]["ended"])[0]["n"]
        if n == previous:
            return n
        previous = n
        time.sleep(0.3)


def latest_ended_after(gw: Gateway, before: int) -> dict[str, Any]:
    rows = gw.wait_for("select * from aibridge_interceptions where ended_at is not null order by started_at",
                       lambda r: len(r) > before)
    assert len(rows) > before, "the request was not recorded"
    row = rows[-1]
    row["metadata"] = json.loads(row["metadata"])
    return row


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
