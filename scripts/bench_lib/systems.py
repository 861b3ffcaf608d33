"""The fake upstream and the systems under test: how each is started, addressed and stopped."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_lib.common import free_port
from bench_lib.procs import Proc

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
PY = sys.executable
PEER_VENV = REPO / ".bench-venv"
PEER_PYTHON = os.environ.get("AIGW_BENCH_PEER_PYTHON", "/root/.pyenv/versions/3.12.1/bin/python3")
ANTHROPIC_KEY = "sk-ant-api03-BENCH-PROVIDER-KEY-aaaaaaaaaaaa"
OPENAI_KEY = "sk-proj-BENCH-PROVIDER-KEY-bbbbbbbbbbbbbbbb"
PEER_MASTER_KEY = "sk-bench-master-key"
# The HTTPS upstream listens on these loopback addresses (one per provider instance, so the
# proxy can tell the instances apart by host).
TLS_HOSTS = {"anthropic": "127.0.0.2", "openai": "127.0.0.3"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CODER_", "AWS_", "LITELLM_", "OTEL_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["NO_PROXY"] = "*"
    env["PYTHONPATH"] = str(SCRIPTS) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def wait_http(url: str, timeout: float, proc: Proc | None = None, ok: tuple[int, ...] = (200,)) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with opener.open(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
            last = f"HTTP {e.code}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.1)
    tail = f"\n{proc.tail()}" if proc is not None else ""
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s ({last}){tail}")


@dataclass
class Upstream:
    proc: Proc
    port: int
    tls_port: int | None
    ca: Path | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_upstream(work: Path, tls: tuple[Path, Path, Path] | None) -> Upstream:
    argv = [PY, "-m", "bench_lib.upstream", "--port", "0"]
    if tls is not None:
        _, cert, key = tls
        argv += ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", str(_tls_port())]
        for host in TLS_HOSTS.values():
            argv += ["--tls-host", host]
    proc = Proc("upstream", argv, cwd=work, env=clean_env(), log=work / "upstream.log", stdout_pipe=True)
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline().decode()
    if not line.startswith("READY "):
        raise RuntimeError(f"fake upstream did not start:\n{line}{proc.tail()}")
    ready = json.loads(line[6:])
    return Upstream(proc, int(ready["port"]), ready.get("tls_port"), tls[0] if tls else None)


def _tls_port() -> int:
    """443 when it is free on every TLS host (a proxy may allow only 80/443), else any free port."""
    for port in (443, 0):
        socks = []
        try:
            for host in TLS_HOSTS.values():
                s = socket.socket()
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener will (TIME_WAIT)
                s.bind((host, port))
                port = s.getsockname()[1]
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    return 0


@dataclass
class System:
    """How the load generator reaches one system for the gateway-route scenarios."""

    name: str
    host: str
    port: int
    paths: dict[str, str]  # api -> request path
    headers: dict[str, dict[str, str]]  # api -> extra request headers
    models: dict[str, str]
    proc: Proc | None  # what to sample (None: nothing of its own)
    notes: list[str] = field(default_factory=list)
    # transparent-proxy access (scenario 4): None when not available
    proxy: dict[str, Any] | None = None
    proxy_reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    workdir: Path | None = None

    def target(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    def host_header(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


MODELS = {"anthropic": "claude-bench", "openai": "gpt-bench"}


def direct(up: Upstream) -> System:
    return System("direct", "127.0.0.1", up.port, {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"},
                  {"anthropic": {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
                   "openai": {"authorization": f"Bearer {OPENAI_KEY}"}}, MODELS, None)


GATEWAY_PATHS = {"anthropic": "/api/v2/aibridge/anthropic/v1/messages",
                 "openai": "/api/v2/aibridge/openai/v1/chat/completions"}


def start_mitmproxy(work: Path, up: Upstream) -> System:
    d = work / "mitmproxy"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(Path(PY).with_name("mitmdump")), "-q", "--mode", f"regular@127.0.0.1:{port}",
            "-s", str(SCRIPTS / "bench_lib" / "mitm_route.py"), "--set", f"confdir={d / 'certs'}",
            "--set", "connection_strategy=lazy", "--set", "flow_detail=0"]
    if up.ca is not None:
        argv += ["--set", f"ssl_verify_upstream_trusted_ca={up.ca}"]
    proc = Proc("mitmproxy", argv, cwd=d, env=clean_env(BENCH_UPSTREAM=f"127.0.0.1:{up.port}"),
                log=d / "mitmdump.log")
    _or_stop(proc, lambda: wait_port(port, 30, proc))
    sysm = System("mitmproxy", "127.0.0.1", port, dict(GATEWAY_PATHS),
                  {"anthropic": {"anthropic-version": "2023-06-01"}, "openai": {}}, MODELS, proc, workdir=d)
    sysm.info["argv"] = " ".join(argv[1:])
    if up.tls_port is not None:
        sysm.proxy = {"auth": "bench:unused", "ca": str(d / "certs" / "mitmproxy-ca-cert.pem"),
                      "headers": {"anthropic": {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
                                  "openai": {"authorization": f"Bearer {OPENAI_KEY}"}}}
    return sysm


def _or_stop(proc: Proc, wait: Callable[[], None]) -> None:
    """Run the readiness wait; a process that never became ready is stopped, not leaked."""
    try:
        wait()
    except BaseException:
        proc.stop()
        raise


def wait_log(proc: Proc, path: Path, lines: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if all(line in text for line in lines):
            return
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: not all of {lines} within {timeout:.0f}s:\n{proc.tail()}")


def wait_port(port: int, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout:.0f}s:\n{proc.tail()}")


def _serve_help(env: dict[str, str], cwd: Path) -> str:
    r = subprocess.run([PY, "-m", "addons.cli", "serve", "--help"], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=60)
    return r.stdout


def aigw_env(d: Path, up: Upstream, port: int) -> dict[str, str]:
    env = clean_env(
        CODER_AIBRIDGE_HOME=str(d),  # the CA in d/certs, where sysm.proxy expects it
        CODER_AIBRIDGE_DB=str(d / "data" / "aibridge.duckdb"),
        CODER_AIBRIDGE_LISTEN=f"127.0.0.1:{port}",
        CODER_AIBRIDGE_PROVIDER_0_TYPE="anthropic",
        CODER_AIBRIDGE_PROVIDER_0_KEY=ANTHROPIC_KEY,
        CODER_AIBRIDGE_PROVIDER_0_BASE_URL=up.url,
        CODER_AIBRIDGE_PROVIDER_1_TYPE="openai",
        CODER_AIBRIDGE_PROVIDER_1_KEY=OPENAI_KEY,
        CODER_AIBRIDGE_PROVIDER_1_BASE_URL=up.url + "/v1",
    )
    if up.tls_port is not None:
        env.update({
            "CODER_AIBRIDGE_PROVIDER_2_TYPE": "anthropic",
            "CODER_AIBRIDGE_PROVIDER_2_NAME": "anthropic-tls",
            "CODER_AIBRIDGE_PROVIDER_2_KEY": ANTHROPIC_KEY,
            "CODER_AIBRIDGE_PROVIDER_2_BASE_URL": f"https://{TLS_HOSTS['anthropic']}:{up.tls_port}",
            "CODER_AIBRIDGE_PROVIDER_3_TYPE": "openai",
            "CODER_AIBRIDGE_PROVIDER_3_NAME": "openai-tls",
            "CODER_AIBRIDGE_PROVIDER_3_KEY": OPENAI_KEY,
            "CODER_AIBRIDGE_PROVIDER_3_BASE_URL": f"https://{TLS_HOSTS['openai']}:{up.tls_port}/v1",
        })
    return env


def start_aigw(work: Path, up: Upstream, name: str = "aigw", otel_endpoint: str | None = None,
               workers: int = 1) -> System:
    d = work / name
    (d / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = aigw_env(d, up, port)
    if otel_endpoint is not None:  # "aigw+otel": the same gateway, exporting spans and metrics
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otel_endpoint
    created = subprocess.run([PY, "-m", "addons.cli", "keys", "create", "--user", "bench", "--json"], env=env,
                             cwd=d, capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        raise RuntimeError(f"aigw keys create failed:\n{created.stderr}")
    key = json.loads(created.stdout)["key"]
    help_text = _serve_help(env, d)
    args = ["serve", *(["--workers", str(workers)] if workers > 1 else [])]
    notes: list[str] = []
    if otel_endpoint is not None:
        notes.append(f"OpenTelemetry export on: OTEL_EXPORTER_OTLP_ENDPOINT={otel_endpoint} (in-process receiver)")
    metrics_port = None
    for flag in ("--aibridge-structured-logging", "--prometheus-enable"):
        if flag in help_text:
            args.append(flag)
        else:
            notes.append(f"{flag} not implemented by this build: left off")
    if "--log-json" in help_text:
        args += ["--log-json", str(d / "aigw.log.jsonl")]
    if "--prometheus-address" in help_text:
        metrics_port = free_port()
        args += ["--prometheus-address", f"127.0.0.1:{metrics_port}"]
    if "--aibridge-proxy-allowed-private-cidrs" in help_text:
        args += ["--aibridge-proxy-allowed-private-cidrs", "127.0.0.0/8"]
    if up.ca is not None:
        args += ["--set", f"ssl_verify_upstream_trusted_ca={up.ca}"]
    if up.tls_port not in (None, 443):  # 443 was taken: let the proxy reach the fake upstream anyway
        args += ["--set", f"aigw_proxy_allowed_ports=80,443,{up.tls_port}"]
    env["AIGW_BENCH_WRITER_STATS"] = str(d / "writer-stats.jsonl")
    proc = Proc(name, [PY, "-m", "bench_lib.aigw_probe", *args], cwd=d, env=env, log=d / "aigw.log")
    _or_stop(proc, lambda: wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc))
    if workers > 1:  # /healthz answers once the primary serves; the others start a few seconds later
        log_file = d / "aigw.log.jsonl" if "--log-json" in args else d / "aigw.log"
        _or_stop(proc, lambda: wait_log(proc, log_file, [f"aigw worker {w} listening" for w in range(1, workers)],
                                        60))
    sysm = System(name, "127.0.0.1", port, dict(GATEWAY_PATHS),
                  {"anthropic": {"x-api-key": key, "anthropic-version": "2023-06-01"},
                   "openai": {"authorization": f"Bearer {key}"}}, MODELS, proc, notes=notes, workdir=d)
    sysm.info.update({"args": " ".join(args), "key": key, "db": str(d / "data" / "aibridge.duckdb"),
                      "writer_stats": str(d / "writer-stats.jsonl"), "metrics_port": metrics_port})
    if metrics_port is not None:
        try:
            wait_http(f"http://127.0.0.1:{metrics_port}/metrics", 5, proc)
            sysm.info["metrics"] = "serving /metrics"
        except RuntimeError:
            notes.append("--prometheus-enable accepted but no /metrics endpoint answered (not wired up yet)")
    if up.tls_port is not None:
        sysm.proxy = {"auth": f"aigw:{key}", "ca": str(d / "certs" / "mitmproxy-ca-cert.pem"),
                      "headers": {"anthropic": {"x-api-key": key, "anthropic-version": "2023-06-01"},
                                  "openai": {"authorization": f"Bearer {key}"}}}
    return sysm


def structured_log_lines(sysm: System) -> int:
    """How many structured log records aigw wrote (JSON file, or `interception log` lines on its console)."""
    if sysm.workdir is None:
        return 0
    n = 0
    for path in (sysm.workdir / "aigw.log.jsonl", sysm.workdir / "aigw.log"):
        try:
            with open(path, "rb") as f:
                n += sum(1 for line in f if b"interception log" in line)
        except OSError:
            pass
    return n


def aigw_query(sysm: System, sql: str) -> list[dict[str, Any]]:
    """Run read-only SQL through the running gateway's admin API (local admin token)."""
    db = Path(sysm.info["db"])
    token = json.loads(db.with_name(db.stem + ".gateway.json").read_text())["token"]
    req = urllib.request.Request(f"http://127.0.0.1:{sysm.port}/api/v2/aibridge/query",
                                 data=json.dumps({"sql": sql}).encode(), method="POST",
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=60) as r:
        data = json.loads(r.read())
    return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]


# -- the peer: LiteLLM's proxy ---------------------------------------------------------


def ensure_peer_venv(log: Path) -> tuple[Path | None, str | None]:
    """Create .bench-venv with litellm[proxy] on first use; (litellm executable, None) or (None, why not)."""
    exe = PEER_VENV / "bin" / "litellm"
    if exe.exists():
        return exe, None
    if not Path(PEER_PYTHON).exists() and shutil.which(PEER_PYTHON) is None:
        return None, f"no Python 3.12 at {PEER_PYTHON} for LiteLLM (set AIGW_BENCH_PEER_PYTHON)"
    print(f"installing litellm[proxy] into {PEER_VENV} (one time, ~730 MB)...", file=sys.stderr, flush=True)
    with open(log, "ab") as out:
        steps = [[PEER_PYTHON, "-m", "venv", str(PEER_VENV)],
                 [str(PEER_VENV / "bin" / "pip"), "install", "--disable-pip-version-check", "-q",
                  "litellm[proxy]", "py-spy"]]
        for step in steps:
            r = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
            if r.returncode != 0:
                return None, f"installing litellm[proxy] failed (exit {r.returncode}; see {log})"
    return (exe, None) if exe.exists() else (None, f"litellm not found in {PEER_VENV} after install")


def start_peer(work: Path, up: Upstream) -> System:
    d = work / "peer"
    d.mkdir(parents=True, exist_ok=True)
    exe, why = ensure_peer_venv(d / "install.log")
    if exe is None:
        raise RuntimeError(why)
    cfg = d / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODELS['anthropic']}\n"
        f"    litellm_params: {{model: anthropic/{MODELS['anthropic']}, api_base: '{up.url}', "
        "api_key: sk-ant-bench}\n"
        f"  - model_name: {MODELS['openai']}\n"
        f"    litellm_params: {{model: openai/{MODELS['openai']}, api_base: '{up.url}/v1', api_key: sk-bench}}\n"
        "general_settings:\n"
        f"  master_key: {PEER_MASTER_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    env = clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True")
    env.pop("PYTHONPATH", None)
    proc = Proc("peer", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)], cwd=d,
                env=env, log=d / "litellm.log")
    _or_stop(proc, lambda: wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180, proc))
    version = subprocess.run([str(PEER_VENV / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
    sysm = System("peer", "127.0.0.1", port, {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"},
                  {"anthropic": {"x-api-key": PEER_MASTER_KEY, "anthropic-version": "2023-06-01"},
                   "openai": {"authorization": f"Bearer {PEER_MASTER_KEY}"}}, MODELS, proc, workdir=d)
    sysm.info["litellm_version"] = version
    sysm.proxy_reason = "LiteLLM's proxy is an API server, not an HTTPS_PROXY (no CONNECT / TLS interception)"
    return sysm


# -- does the transparent proxy work? ---------------------------------------------------


def probe_connect(sysm: System, up: Upstream) -> str | None:
    """Try one CONNECT + TLS + request through the system; None when it works, else why not."""
    if sysm.proxy is None or up.tls_port is None:
        return sysm.proxy_reason or "no TLS upstream"
    host = TLS_HOSTS["anthropic"]
    try:
        with socket.create_connection(("127.0.0.1", sysm.port), timeout=10) as s:
            auth = base64.b64encode(sysm.proxy["auth"].encode()).decode()
            s.sendall(f"CONNECT {host}:{up.tls_port} HTTP/1.1\r\nhost: {host}:{up.tls_port}\r\n"
                      f"proxy-authorization: Basic {auth}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            status = head.split(b" ", 2)[1:2]
            if status != [b"200"]:
                return f"CONNECT answered {head.split(b'\r\n', 1)[0].decode(errors='replace') or 'nothing'}"
            ctx = ssl.create_default_context(cafile=sysm.proxy["ca"])
            with ctx.wrap_socket(s, server_hostname=host) as t:
                body = json.dumps({"model": MODELS["anthropic"], "max_tokens": 8,
                                   "messages": [{"role": "user", "content": "hi"}]}).encode()
                hdrs = "".join(f"{k}: {v}\r\n" for k, v in sysm.proxy["headers"]["anthropic"].items())
                t.sendall(f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{up.tls_port}\r\n"
                          f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{hdrs}"
                          "connection: close\r\n\r\n".encode() + body)
                resp = b""
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        break
                    resp += chunk
            first = resp.split(b"\r\n", 1)[0].decode(errors="replace")
            if not first.startswith("HTTP/1.1 200"):
                return f"request through the proxy answered {first or 'nothing'}: {resp[-300:]!r}"
    except (OSError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}"
    return None
