"""`scripts/bench`: aigw against direct calls, plain mitmproxy and a peer gateway, in one run.

Starts a fast fake upstream, the systems under test and a load generator (each
its own process), runs the scenarios of BENCHMARKS.md, prints a table with
ratios between systems measured side by side, and writes the same results as
JSON (default bench-results/<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_lib import profile, recorder, report
from bench_lib.common import rounded
from bench_lib.otlp_sink import OtlpSink
from bench_lib.procs import Proc, Sampler, machine_busy_seconds, rss_bytes
from bench_lib.systems import (
    PY,
    REPO,
    TLS_HOSTS,
    System,
    Upstream,
    aigw_query,
    clean_env,
    direct,
    probe_connect,
    start_aigw,
    start_mitmproxy,
    start_peer,
    start_upstream,
    structured_log_lines,
)
from bench_lib.tlsgen import make_upstream_certs

APIS = ("anthropic", "openai")
WORKERS = "aigw-workers"  # only with --workers N: aigw serve --workers N
ORDER = ("direct", "mitmproxy", "aigw", WORKERS, "aigw+otel", "peer")  # aigw+otel: only with --otel


@dataclass
class Params:
    s1_concurrency: tuple[int, ...] = (16, 64)
    s1_duration: float = 10.0
    s1_warmup: float = 2.0
    s2_events: int = 200
    s2_interval_ms: float = 5.0
    s2_concurrency: int = 16
    s2_streams: int = 3
    s3_streams: int = 1000
    s3_seconds: float = 60.0
    s3_interval_ms: float = 100.0
    s3_ramp: float = 5.0
    s5_requests: int = 20000
    s6_requests: int = 50000
    s6_concurrency: int = 16
    s6_warmup: int = 1000
    s6_fresh: bool = True  # soak a freshly started process
    s4_apis: tuple[str, ...] = APIS
    s7_events: int = 100
    s7_intervals_ms: tuple[float, ...] = (2.0, 20.0)
    s7_seconds: float = 6.0  # of streams, one after the other, per interval and system

    @classmethod
    def quick(cls) -> Params:
        return cls(s1_concurrency=(4,), s1_duration=0.5, s1_warmup=0.2, s2_events=20, s2_interval_ms=1,
                   s2_concurrency=2, s2_streams=1, s3_streams=10, s3_seconds=1.0, s3_interval_ms=100,
                   s3_ramp=0.2, s5_requests=300, s6_requests=200, s6_concurrency=4, s6_warmup=20,
                   s6_fresh=False, s4_apis=("anthropic",), s7_events=20, s7_seconds=0.5)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def request_body(api: str, model: str, stream: bool, events: int = 0, interval_ms: float = 0) -> str:
    content = f"bench:events={events},interval_ms={interval_ms:g}" if stream else "hello bench"
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if api == "anthropic":
        body["max_tokens"] = 256
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def stamped_events(api: str, events: int) -> int:
    """Content events the fake upstream stamps in a stream of `events` events."""
    return max(1, events - (5 if api == "anthropic" else 3))


class Bench:
    def __init__(self, args: argparse.Namespace, params: Params, work: Path, out_dir: Path) -> None:
        self.args = args
        self.p = params
        self.work = work
        self.out_dir = out_dir
        self.systems: dict[str, System] = {}
        self.unavailable: dict[str, str] = {}
        self.up: Upstream | None = None
        self.runs: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.otlp: OtlpSink | None = None

    # -- plumbing -------------------------------------------------------------------

    def loadgen(self, spec: dict[str, Any], procs: dict[str, Proc | None], timeout: float) -> dict[str, Any]:
        assert self.up is not None
        with Sampler({**procs, "upstream": self.up.proc}) as sampler:
            t0 = time.monotonic()
            try:
                r = subprocess.run([PY, "-m", "bench_lib.loadgen", json.dumps(spec)], capture_output=True,
                                   text=True, env=clean_env(), timeout=timeout)
            except subprocess.TimeoutExpired:
                result: dict[str, Any] = {"failed": f"load generator timed out after {timeout:.0f}s", "errors": 1}
            else:
                if r.returncode != 0 or not r.stdout.strip():
                    result = {"failed": f"load generator exit {r.returncode}: {r.stderr[-800:]}", "errors": 1}
                else:
                    result = json.loads(r.stdout.strip().splitlines()[-1])
            t1 = time.monotonic()
        result["window"] = [t0, t1]
        result["procs"] = sampler.result
        # CPU used by processes that are not part of this measurement (e.g. other jobs on the machine).
        ours = sum(p.get("cpu_pct", 0) for p in sampler.result.values()) + float(result.get("loadgen_cpu_pct") or 0)
        sut = sampler.result.get("sut")
        if sut and result.get("rps") and spec["mode"] == "blocking":
            # CPU time per request is steadier than req/s when the machine is shared.
            result["cpu_ms_per_req"] = round(10 * sut["cpu_pct"] / result["rps"], 3)
        if sut and result.get("events"):
            result["cpu_us_per_event"] = round(1e4 * sut["cpu_pct"] * (t1 - t0) / result["events"], 2)
        result["machine_cpu_pct"] = sampler.machine_cpu_pct
        result["other_cpu_pct"] = round(max(sampler.machine_cpu_pct - ours, 0.0), 1)
        return result

    def spec(self, sysm: System, api: str, mode: str, stream: bool, **extra: Any) -> dict[str, Any]:
        events = extra.pop("events", 0)
        interval = extra.pop("interval_ms", 0)
        return {
            "mode": mode, "target": sysm.target(), "host_header": sysm.host_header(),
            "requests": [{"path": sysm.paths[api], "headers": sysm.headers[api],
                          "body": request_body(api, sysm.models[api], stream, events, interval)}],
            **extra,
        }

    def record(self, scenario: str, sysm: str, params: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        run = {"scenario": scenario, "system": sysm, **params, **result}
        self.runs.append(run)
        return run

    def active(self, names: tuple[str, ...] = ORDER) -> list[System]:
        return [self.systems[n] for n in names if n in self.systems]

    # -- setup ----------------------------------------------------------------------

    def start(self) -> None:
        certs = make_upstream_certs(self.work / "tls", ["127.0.0.1", *TLS_HOSTS.values()])
        self.up = up = start_upstream(self.work, certs)
        log(f"fake upstream on {up.url} (TLS port {up.tls_port})")
        wanted = set(self.args.systems.split(","))
        self.systems["direct"] = direct(up)
        peer_thread = None
        peer_box: dict[str, Any] = {}
        if "peer" in wanted:
            if not self.args.peer:
                self.unavailable["peer"] = "skipped (--no-peer" + (" / --quick)" if self.args.quick else ")")
            else:
                def boot_peer() -> None:
                    try:
                        peer_box["system"] = start_peer(self.work, up)
                    except Exception as e:
                        peer_box["error"] = f"{type(e).__name__}: {e}"

                peer_thread = threading.Thread(target=boot_peer, daemon=True)
                peer_thread.start()
        for name, starter in (("mitmproxy", start_mitmproxy), ("aigw", start_aigw)):
            if name not in wanted:
                continue
            try:
                self.systems[name] = starter(self.work, up)
                log(f"{name} on 127.0.0.1:{self.systems[name].port}")
            except Exception as e:
                self.unavailable[name] = f"{type(e).__name__}: {e}"
                log(f"{name} could not start: {e}")
        if self.args.workers > 1 and "aigw" in wanted:
            try:
                self.systems[WORKERS] = start_aigw(self.work, up, WORKERS, workers=self.args.workers)
                log(f"{WORKERS} ({self.args.workers} processes) on 127.0.0.1:{self.systems[WORKERS].port}")
            except Exception as e:
                self.unavailable[WORKERS] = f"{type(e).__name__}: {e}"
                log(f"{WORKERS} could not start: {e}")
        if self.args.otel:
            self.otlp = OtlpSink().start()
            try:
                self.systems["aigw+otel"] = start_aigw(self.work, up, "aigw+otel", self.otlp.url)
                log(f"aigw+otel on 127.0.0.1:{self.systems['aigw+otel'].port} (OTLP to {self.otlp.url})")
            except Exception as e:
                self.unavailable["aigw+otel"] = f"{type(e).__name__}: {e}"
                log(f"aigw+otel could not start: {e}")
        if peer_thread is not None:
            peer_thread.join()
            if "system" in peer_box:
                self.systems["peer"] = peer_box["system"]
                log(f"peer (LiteLLM {self.systems['peer'].info.get('litellm_version')}) on "
                    f"127.0.0.1:{self.systems['peer'].port}")
            else:
                self.unavailable["peer"] = f"LiteLLM could not run here: {peer_box.get('error')}"
                log(self.unavailable["peer"])
        # Keep the systems (and their idle CPU) in the order they are measured.
        self.systems = {n: self.systems[n] for n in ORDER if n in self.systems}

    def wait_quiet(self, limit: float) -> None:
        """Report (and with --wait-quiet, wait out) CPU load from processes outside the benchmark."""
        deadline = time.monotonic() + limit
        while True:
            b0, t0 = machine_busy_seconds(), time.monotonic()
            time.sleep(2.0)
            busy = 100 * (machine_busy_seconds() - b0) / (time.monotonic() - t0)
            self.results.setdefault("background_cpu_pct_before", []).append(round(busy, 1))
            if busy < 25 or time.monotonic() >= deadline:
                log(f"background CPU before measuring: {busy:.0f} % of one CPU"
                    + ("" if busy < 25 else " (busy machine: figures will be noisy)"))
                return
            log(f"machine busy ({busy:.0f} % of one CPU outside the benchmark); waiting for it to calm down")

    def stop(self) -> None:
        for sysm in self.systems.values():
            try:
                sysm.stop()
            except Exception as e:
                log(f"stopping {sysm.name}: {e}")
        if self.up is not None:
            self.up.proc.stop()
        if self.otlp is not None:  # after the gateways: their last exports arrive while they stop
            self.results["otel_received"] = self.otlp.stats()
            self.otlp.stop()

    # -- scenarios ------------------------------------------------------------------

    def s1_blocking(self) -> None:
        p = self.p
        params = {"apis": list(APIS), "concurrency": list(p.s1_concurrency), "duration_s": p.s1_duration,
                  "warmup_s": p.s1_warmup, "body": "small (one user message; ~400-byte JSON answer)",
                  "connections": "keep-alive, one per concurrent client"}
        log(f"scenario 1 (blocking): {params}")
        for api in APIS:
            for c in p.s1_concurrency:
                for sysm in self.active():
                    spec = self.spec(sysm, api, "blocking", False, concurrency=c, duration=p.s1_duration,
                                     warmup=p.s1_warmup)
                    r = self.loadgen(spec, {"sut": sysm.proc}, p.s1_duration + p.s1_warmup + 60)
                    if sysm.name == "aigw":
                        r["recorder"] = recorder.probe_window(Path(sysm.info["writer_stats"]), *r["window"])
                    self.record("1", sysm.name, {"api": api, "concurrency": c}, r)
                    log(f"  {api} c={c} {sysm.name}: {r.get('rps', 0):.0f} req/s "
                        f"p50 {_g(r, 'latency_ms', 'p50')} ms p99 {_g(r, 'latency_ms', 'p99')} ms "
                        f"errors {r.get('errors')}")
        self.results["1_blocking"] = {"params": params}

    def s2_streaming(self) -> None:
        p = self.p
        params = {"apis": list(APIS), "events_per_stream": p.s2_events, "interval_ms": p.s2_interval_ms,
                  "concurrency": p.s2_concurrency, "streams_per_connection": p.s2_streams,
                  "stamped": "content events carry the upstream's send time; delay = client read time - stamp"}
        log(f"scenario 2 (streaming): {params}")
        for api in APIS:
            for sysm in self.active():
                spec = self.spec(sysm, api, "stream", True, events=p.s2_events, interval_ms=p.s2_interval_ms,
                                 concurrency=p.s2_concurrency, streams=p.s2_streams,
                                 expect_events=stamped_events(api, p.s2_events), timeout=120)
                r = self.loadgen(spec, {"sut": sysm.proc}, 600)
                self.record("2", sysm.name, {"api": api}, r)
                log(f"  {api} {sysm.name}: event delay p50 {_g(r, 'event_delay_ms', 'p50')} ms "
                    f"p99 {_g(r, 'event_delay_ms', 'p99')} ms, ttfb p50 {_g(r, 'ttfb_ms', 'p50')} ms, "
                    f"errors {r.get('errors')}")
        self.results["2_streaming"] = {"params": params}

    def s3_many_agents(self) -> None:
        p = self.p
        events = int(p.s3_seconds * 1000 / p.s3_interval_ms)
        params = {"streams": p.s3_streams, "hold_s": p.s3_seconds, "interval_ms": p.s3_interval_ms,
                  "events_per_stream": events, "ramp_s": p.s3_ramp, "apis": "half anthropic, half openai"}
        log(f"scenario 3 (many agents): {params}")
        for sysm in self.active():
            spec: dict[str, Any] = {
                "mode": "hold", "target": sysm.target(), "host_header": sysm.host_header(),
                # Stream lengths chosen so each API delivers exactly `events` stamped events.
                "requests": [{"path": sysm.paths[api], "headers": sysm.headers[api],
                              "body": request_body(api, sysm.models[api], True,
                                                   events + events - stamped_events(api, events),
                                                   p.s3_interval_ms)}
                             for api in APIS],
                "concurrency": p.s3_streams, "ramp": p.s3_ramp, "expect_events": events,
                "timeout": p.s3_seconds + p.s3_ramp + 90,
            }
            r = self.loadgen(spec, {"sut": sysm.proc}, p.s3_seconds + p.s3_ramp + 180)
            self.record("3", sysm.name, {}, r)
            sut = r["procs"].get("sut") or r["procs"].get("upstream", {})
            # The load generator and the fake upstream share the CPUs with the system under test.
            harness = float(r.get("loadgen_cpu_pct") or 0) + float(r["procs"].get("upstream", {}).get("cpu_pct") or 0)
            log(f"  {sysm.name}: errors {r.get('errors')} event delay p99 {_g(r, 'event_delay_ms', 'p99')} ms, "
                f"RSS max {sut.get('rss_max_mb')} MB, CPU {sut.get('cpu_pct')} %, CPU per event "
                f"{r.get('cpu_us_per_event', '-')} µs; load generator + fake upstream {harness:.0f} % of one CPU")
        self.results["3_many_agents"] = {"params": params}

    def s7_one_stream(self) -> None:
        """One stream at a time: what aigw adds per event over plain mitmdump when nothing else runs."""
        p = self.p
        params = {"api": "anthropic", "events_per_stream": p.s7_events, "intervals_ms": list(p.s7_intervals_ms),
                  "concurrency": 1, "seconds_per_case": p.s7_seconds,
                  "metric": "mean event delay (client read time - upstream stamp); aigw - mitmproxy"}
        log(f"scenario 7 (one stream at a time): {params}")
        for interval in p.s7_intervals_ms:
            streams = max(2, round(p.s7_seconds * 1000 / (p.s7_events * interval)))
            for sysm in self.active(("mitmproxy", "aigw", WORKERS)):
                spec = self.spec(sysm, "anthropic", "stream", True, events=p.s7_events, interval_ms=interval,
                                 concurrency=1, streams=streams, expect_events=stamped_events("anthropic", p.s7_events),
                                 timeout=120)
                r = self.loadgen(spec, {"sut": sysm.proc}, 600)
                self.record("7", sysm.name, {"api": "anthropic", "interval_ms": interval}, r)
                log(f"  {interval:g} ms {sysm.name}: event delay mean {_g(r, 'event_delay_ms', 'mean')} ms "
                    f"p50 {_g(r, 'event_delay_ms', 'p50')} ms p99 {_g(r, 'event_delay_ms', 'p99')} ms, "
                    f"errors {r.get('errors')}")
        self.results["7_one_stream"] = {"params": params}

    def s4_proxy(self) -> None:
        p = self.p
        up = self.up
        assert up is not None
        params = {"mode": "HTTPS_PROXY: CONNECT, TLS interception, keep-alive", "apis": list(p.s4_apis),
                  "blocking_concurrency": list(p.s1_concurrency), "duration_s": p.s1_duration,
                  "stream_events": p.s2_events, "stream_interval_ms": p.s2_interval_ms,
                  "stream_concurrency": p.s2_concurrency, "upstream": f"HTTPS on {sorted(TLS_HOSTS.values())}"}
        log(f"scenario 4 (transparent proxy): {params}")
        availability: dict[str, str | None] = {}
        targets: dict[str, dict[str, Any]] = {}
        for sysm in self.active(("mitmproxy", "aigw", "peer")):
            why = probe_connect(sysm, up)
            availability[sysm.name] = why
            if why is not None:
                log(f"  {sysm.name}: transparent proxy not available: {why}")
        for api in APIS:
            host = TLS_HOSTS[api]
            targets.setdefault("direct", {})[api] = {
                "target": {"host": host, "port": up.tls_port, "tls": True, "ca": str(up.ca)},
                "headers": self.systems["direct"].headers[api]}
            for name, why in availability.items():
                if why is not None:
                    continue
                sysm = self.systems[name]
                assert sysm.proxy is not None
                targets.setdefault(name, {})[api] = {
                    "target": {"host": "127.0.0.1", "port": sysm.port, "tls": True, "ca": sysm.proxy["ca"],
                               "proxy": {"host": "127.0.0.1", "port": sysm.port, "auth": sysm.proxy["auth"]},
                               "connect": f"{host}:{up.tls_port}"},
                    "headers": sysm.proxy["headers"][api]}
        paths = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
        models = self.systems["direct"].models
        for api in p.s4_apis:
            for name in ORDER:
                if name not in targets:
                    continue
                t = targets[name][api]
                proc = self.systems[name].proc
                base = {"target": t["target"], "host_header": f"{TLS_HOSTS[api]}:{up.tls_port}"}
                for c in p.s1_concurrency:
                    spec = {**base, "mode": "blocking", "concurrency": c, "duration": p.s1_duration,
                            "warmup": p.s1_warmup,
                            "requests": [{"path": paths[api], "headers": t["headers"],
                                          "body": request_body(api, models[api], False)}]}
                    r = self.loadgen(spec, {"sut": proc}, p.s1_duration + p.s1_warmup + 60)
                    self.record("4", name, {"api": api, "kind": "blocking", "concurrency": c}, r)
                    log(f"  {api} blocking c={c} {name}: {r.get('rps', 0):.0f} req/s "
                        f"p50 {_g(r, 'latency_ms', 'p50')} ms errors {r.get('errors')}")
                spec = {**base, "mode": "stream", "concurrency": p.s2_concurrency, "streams": p.s2_streams,
                        "expect_events": stamped_events(api, p.s2_events), "timeout": 120,
                        "requests": [{"path": paths[api], "headers": t["headers"],
                                      "body": request_body(api, models[api], True, p.s2_events,
                                                           p.s2_interval_ms)}]}
                r = self.loadgen(spec, {"sut": proc}, 600)
                self.record("4", name, {"api": api, "kind": "stream"}, r)
                log(f"  {api} stream {name}: event delay p50 {_g(r, 'event_delay_ms', 'p50')} ms "
                    f"p99 {_g(r, 'event_delay_ms', 'p99')} ms errors {r.get('errors')}")
        self.results["4_transparent_proxy"] = {
            "params": params,
            "availability": {n: ("available" if why is None else f"not available yet: {why}")
                             for n, why in availability.items()},
        }

    def s5_recorder(self, standalone: dict[str, Any]) -> None:
        during = {f"{r['api']} c={r['concurrency']}": r.get("recorder") for r in self.runs
                  if r["scenario"] == "1" and r["system"] == "aigw"}
        self.results["5_recorder"] = {
            "params": {"standalone_requests": self.p.s5_requests,
                       "records_per_request": "start, prompt, token usage, end (+ a tool call every other)",
                       "rows_per_request": "3 (+1 tool row every other)",
                       "during_scenario_1": "queue depth and batch write time polled inside aigw"},
            "standalone": standalone, "during_scenario_1": during,
        }

    def s6_soak(self) -> None:
        p = self.p
        up = self.up
        assert up is not None
        params = {"requests": p.s6_requests, "concurrency": p.s6_concurrency, "warmup_requests": p.s6_warmup,
                  "apis": "alternating anthropic / openai, blocking", "fresh_process": p.s6_fresh}
        log(f"scenario 6 (soak): {params}")
        out: dict[str, Any] = {"params": params, "systems": {}}
        soakers = [n for n in ("mitmproxy", "aigw") if n in self.systems]
        if "peer" in self.systems and self.args.soak_peer:
            soakers.append("peer")
        elif "peer" in self.systems:
            out["systems"]["peer"] = {"skipped": "not run by default (LiteLLM needs several minutes for "
                                                 "50,000 requests here); --soak-peer runs it"}
        for name in soakers:
            fresh = self.systems[name]
            if p.s6_fresh:
                # A fresh process, so RSS growth is the soak's own.
                fresh.stop()
                starter = {"mitmproxy": start_mitmproxy, "aigw": start_aigw, "peer": start_peer}[name]
                fresh = self.systems[name] = starter(self.work / "soak", up)
            assert fresh.proc is not None
            reqs = [{"path": fresh.paths[api], "headers": fresh.headers[api],
                     "body": request_body(api, fresh.models[api], False)} for api in APIS]
            base = {"mode": "blocking", "target": fresh.target(), "host_header": fresh.host_header(),
                    "requests": reqs, "concurrency": p.s6_concurrency}
            warm = self.loadgen({**base, "count": p.s6_warmup}, {"sut": fresh.proc}, 600)
            time.sleep(1.0)
            before = self._rows(fresh) if name == "aigw" else None
            rss0 = rss_bytes(fresh.proc.pids())
            r = self.loadgen({**base, "count": p.s6_requests}, {"sut": fresh.proc}, 3600)
            sent = int(r.get("requests", 0)) + int(r.get("errors", 0))
            res: dict[str, Any] = {"warmup_errors": warm.get("errors"), "sent": sent, **r}
            if name == "aigw":
                res["rows"] = self._wait_rows(fresh, before, sent)
                res["structured_log_records"] = structured_log_lines(fresh)
            time.sleep(1.0)
            rss1 = rss_bytes(fresh.proc.pids())
            res["rss_start_mb"] = round(rss0 / 2**20, 1)
            res["rss_end_mb"] = round(rss1 / 2**20, 1)
            res["rss_growth_pct"] = round(100 * (rss1 - rss0) / rss0, 2) if rss0 else None
            # Growth over the second half only: a leak keeps growing, a warm-up plateaus.
            mid = (r.get("procs", {}).get("sut") or {}).get("rss_mid_mb")
            res["rss_mid_mb"] = mid
            res["rss_second_half_growth_pct"] = round(100 * (rss1 / 2**20 - mid) / mid, 2) if mid else None
            out["systems"][name] = res
            self.record("6", name, {}, res)
            log(f"  {name}: {r.get('rps', 0):.0f} req/s, RSS {res['rss_start_mb']} -> {res['rss_mid_mb']} -> "
                f"{res['rss_end_mb']} MB ({res['rss_growth_pct']} %; "
                f"second half {res['rss_second_half_growth_pct']} %), errors {r.get('errors')}"
                + (f", rows {res['rows']}" if name == "aigw" else ""))
        self.results["6_soak"] = out

    def _rows(self, sysm: System) -> dict[str, int]:
        row = aigw_query(sysm, "SELECT count(*) AS n, count(ended_at) AS ended, count(DISTINCT id) AS ids "
                               "FROM aibridge_interceptions")[0]
        return {k: int(v) for k, v in row.items()}

    def _wait_rows(self, sysm: System, before: dict[str, int] | None, sent: int) -> dict[str, Any]:
        assert before is not None
        deadline = time.monotonic() + 60
        now = self._rows(sysm)
        while time.monotonic() < deadline and now["ended"] - before["ended"] < sent:
            time.sleep(0.5)
            now = self._rows(sysm)
        new, ended, ids = (now[k] - before[k] for k in ("n", "ended", "ids"))
        return {"new_rows": new, "new_ended": ended, "new_distinct_ids": ids, "sent": sent,
                "exactly_one_per_request": new == ended == ids == sent}

    # -- profiling -------------------------------------------------------------------

    def profile_hot_path(self) -> None:
        exe = profile.py_spy()
        if exe is None:
            self.results["profile"] = {"skipped": "py-spy not found (it is installed into .bench-venv with the peer)"}
            return
        out: dict[str, Any] = {}
        seconds = max(4.0, self.p.s1_duration)
        for name in ("aigw", "mitmproxy"):
            sysm = self.systems.get(name)
            if sysm is None or sysm.proc is None:
                continue
            for kind in ("blocking", "stream"):
                raw = self.out_dir / f"{self.args.stamp}-profile-{name}-{kind}.txt"
                if kind == "blocking":
                    spec = self.spec(sysm, "anthropic", "blocking", False, concurrency=max(self.p.s1_concurrency),
                                     duration=seconds + 2, warmup=0.5)
                else:
                    spec = self.spec(sysm, "anthropic", "stream", True, events=self.p.s2_events,
                                     interval_ms=self.p.s2_interval_ms, concurrency=self.p.s2_concurrency * 4,
                                     streams=max(1, int(seconds * 1000 / (self.p.s2_events *
                                                                          max(self.p.s2_interval_ms, 1)))) + 1,
                                     expect_events=stamped_events("anthropic", self.p.s2_events), timeout=120)
                spy = profile.start(sysm.proc.pid, seconds, raw)
                time.sleep(0.3)
                r = self.loadgen(spec, {"sut": sysm.proc}, 600)
                if spy is not None:
                    try:
                        spy.wait(60)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                folded = profile.fold(raw)
                folded["raw_file"] = str(raw)
                folded["load"] = {"rps": r.get("rps"), "cpu_pct": r["procs"].get("sut", {}).get("cpu_pct")}
                out[f"{name}_{kind}"] = folded
                top = ", ".join(f"{f} {p}%" for f, p in folded.get("self", [])[:5])
                log(f"  profile {name} {kind}: {folded.get('samples')} samples; top self: {top}")
        self.results["profile"] = out


def _g(r: dict[str, Any], key: str, pct: str) -> Any:
    v = (r.get(key) or {}).get(pct)
    return round(v, 2) if isinstance(v, float) else v


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gb": round(mem, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "note": "load generator, fake upstream and the system under test share these CPUs"}


def git_info() -> dict[str, Any]:
    def run(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip()

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--", "addons"))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny parameters, a few seconds, no peer (smoke test)")
    ap.add_argument("--json", metavar="PATH", help="results file, or a directory for <timestamp>.json "
                    "(default bench-results/)")
    peer = ap.add_mutually_exclusive_group()
    peer.add_argument("--peer", dest="peer", action="store_true", default=None,
                      help="include LiteLLM's proxy (default, except with --quick); installs it on first use")
    peer.add_argument("--no-peer", dest="peer", action="store_false")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma-separated subset of 1-7")
    ap.add_argument("--workers", type=int, default=0, metavar="N",
                    help=f"also measure aigw serve --workers N ('{WORKERS}') and report its scaling over one "
                    "process (scenarios 1-3, 7)")
    ap.add_argument("--systems", default=",".join(ORDER), help="comma-separated subset of " + ",".join(ORDER))
    ap.add_argument("--profile", action="store_true", help="py-spy the aigw and mitmproxy hot paths (extra runs)")
    ap.add_argument("--soak-peer", action="store_true", help="also soak the peer (slow)")
    ap.add_argument("--otel", action="store_true", help="also measure aigw with OpenTelemetry export on "
                    "('aigw+otel', to an in-process OTLP receiver) in scenarios 1-3")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory (logs, databases)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before measuring, wait up to this long for other processes to leave the CPUs idle")
    d = Params()
    ap.add_argument("--duration", type=float, help=f"scenario 1/4 seconds per run (default {d.s1_duration:g})")
    ap.add_argument("--hold-streams", type=int, help=f"scenario 3 streams (default {d.s3_streams})")
    ap.add_argument("--hold-seconds", type=float, help=f"scenario 3 hold time (default {d.s3_seconds:g})")
    ap.add_argument("--soak-requests", type=int, help=f"scenario 6 requests (default {d.s6_requests})")
    args = ap.parse_args(argv)
    if args.peer is None:
        args.peer = not args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = Params.quick() if args.quick else Params()
    if args.duration:
        params.s1_duration = args.duration
    if args.hold_streams:
        params.s3_streams = args.hold_streams
    if args.hold_seconds:
        params.s3_seconds = args.hold_seconds
    if args.soak_requests:
        params.s6_requests = args.soak_requests
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.stamp = stamp
    if args.json and (Path(args.json).is_dir() or args.json.endswith("/")):
        out_path = Path(args.json) / f"{stamp}.json"
    elif args.json:
        out_path = Path(args.json)
    else:
        out_path = REPO / "bench-results" / f"{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    work = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    bench = Bench(args, params, work, out_path.parent)
    started = time.monotonic()
    log(f"work directory {work}; results -> {out_path}")
    try:
        bench.start()
        bench.wait_quiet(args.wait_quiet)
        standalone: dict[str, Any] | None = None
        if "5" in scenarios:
            # The writer alone first, while every system is idle.
            log(f"scenario 5 (recorder): RecordWriter alone, {params.s5_requests} requests' records")
            standalone = recorder.standalone(params.s5_requests)
            log(f"  {standalone['rows_per_s']:.0f} rows/s ({standalone['records_per_s']:.0f} records/s)")
        if "1" in scenarios:
            bench.s1_blocking()
        if args.profile:
            bench.profile_hot_path()
        if "7" in scenarios:
            bench.s7_one_stream()
        if "2" in scenarios:
            bench.s2_streaming()
        if "4" in scenarios:
            bench.s4_proxy()
        if "3" in scenarios:
            bench.s3_many_agents()
        if standalone is not None:
            bench.s5_recorder(standalone)
        if "6" in scenarios:
            bench.s6_soak()
        if "aigw" in bench.systems:
            bench.results.setdefault("aigw_checks", {})["structured_log_records"] = structured_log_lines(
                bench.systems["aigw"])
    finally:
        bench.stop()
    systems_info: dict[str, Any] = {}
    for name in ORDER:
        if name in bench.systems:
            s = bench.systems[name]
            systems_info[name] = {"available": True, "notes": s.notes,
                                  **{k: v for k, v in s.info.items() if k not in ("key",)}}
        elif name in bench.unavailable:
            systems_info[name] = {"available": False, "reason": bench.unavailable[name]}
    doc: dict[str, Any] = {
        "version": 1,
        "timestamp": stamp,
        "quick": args.quick,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "git": git_info(),
        "params": asdict(params),
        "systems": systems_info,
        "scenarios": bench.results,
        "runs": rounded(bench.runs, 3),
    }
    doc["table"] = report.table(doc)
    doc["targets"] = report.targets(doc)
    out_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(report.render(doc))
    print(f"\nresults: {out_path}")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0
