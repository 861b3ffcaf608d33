"""The results table (values per system, ratios between systems) and the target checks."""

from __future__ import annotations

from typing import Any

OTEL = "aigw+otel"  # only with --otel: the cost of OpenTelemetry export
WORKERS = "aigw-workers"  # only with --workers N
SYSTEMS = ("direct", "mitmproxy", "aigw", WORKERS, OTEL, "peer")
RATIOS = (("aigw", "mitmproxy"), ("aigw", "direct"), ("aigw", "peer"), (OTEL, "aigw"), (WORKERS, "aigw"))
WORKERS_SCALING = 1.6  # N workers' blocking req/s over one process's, at the highest concurrency
WORKERS_S3_P99_MS = 250.0


def _get(run: dict[str, Any], path: str) -> Any:
    cur: Any = run
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _runs(doc: dict[str, Any], scenario: str, **match: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for r in doc["runs"]:
        if r["scenario"] == scenario and all(r.get(k) == v for k, v in match.items()):
            out[r["system"]] = r
    return out


def _row(scenario: str, case: str, metric: str, better: str, values: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, float | None] = {}
    for a, b in RATIOS:
        va, vb = values.get(a), values.get(b)
        ratios[f"{a}/{b}"] = round(va / vb, 3) if isinstance(va, int | float) and isinstance(vb, int | float) \
            and vb else None
    return {"scenario": scenario, "case": case, "metric": metric, "better": better, "values": values,
            "ratios": ratios}


def _metric_rows(doc: dict[str, Any], scenario: str, label: str, case: str, match: dict[str, Any],
                 metrics: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    runs = _runs(doc, scenario, **match)
    if not runs:
        return []
    rows = []
    for metric, path, better in metrics:
        values = {s: _get(runs[s], path) for s in SYSTEMS if s in runs}
        if any(v is not None for v in values.values()):
            rows.append(_row(label, case, metric, better, values))
    return rows


def table(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params = doc["params"]
    blocking = [("req/s", "rps", "higher"), ("p50 ms", "latency_ms.p50", "lower"),
                ("p99 ms", "latency_ms.p99", "lower"), ("errors", "errors", "lower"),
                ("CPU %", "procs.sut.cpu_pct", "lower"), ("CPU ms/request", "cpu_ms_per_req", "lower")]
    streaming = [("event delay p50 ms", "event_delay_ms.p50", "lower"),
                 ("event delay p99 ms", "event_delay_ms.p99", "lower"),
                 ("TTFB p50 ms", "ttfb_ms.p50", "lower"), ("TTFB p99 ms", "ttfb_ms.p99", "lower"),
                 ("errors", "errors", "lower"), ("CPU %", "procs.sut.cpu_pct", "lower"),
                 ("CPU us/event", "cpu_us_per_event", "lower")]
    for api in ("anthropic", "openai"):
        for c in params["s1_concurrency"]:
            rows += _metric_rows(doc, "1", "1 blocking", f"{api} c={c}", {"api": api, "concurrency": c}, blocking)
    for api in ("anthropic", "openai"):
        rows += _metric_rows(doc, "2", "2 streaming", f"{api} {params['s2_events']} ev/{params['s2_interval_ms']:g}ms",
                             {"api": api}, streaming)
    rows += _metric_rows(doc, "3", "3 many agents",
                         f"{params['s3_streams']} streams {params['s3_seconds']:g}s",
                         {}, [("errors", "errors", "lower"), ("event delay p50 ms", "event_delay_ms.p50", "lower"),
                              ("event delay p99 ms", "event_delay_ms.p99", "lower"),
                              ("RSS max MB", "procs.sut.rss_max_mb", "lower"),
                              ("CPU %", "procs.sut.cpu_pct", "lower"),
                              ("CPU us/event", "cpu_us_per_event", "lower")])
    for api in ("anthropic", "openai"):
        for c in params["s1_concurrency"]:
            rows += _metric_rows(doc, "4", "4 proxy blocking", f"{api} c={c}",
                                 {"api": api, "kind": "blocking", "concurrency": c}, blocking[:4])
        rows += _metric_rows(doc, "4", "4 proxy streaming", api, {"api": api, "kind": "stream"}, streaming[:4])
    for interval in params.get("s7_intervals_ms") or ():
        rows += _metric_rows(doc, "7", "7 one stream", f"{params['s7_events']} ev/{interval:g}ms c=1",
                             {"interval_ms": interval},
                             [("event delay mean ms", "event_delay_ms.mean", "lower"),
                              ("event delay p50 ms", "event_delay_ms.p50", "lower"),
                              ("event delay p99 ms", "event_delay_ms.p99", "lower"), ("errors", "errors", "lower")])
    s5 = doc["scenarios"].get("5_recorder")
    if s5:
        rows.append(_row("5 recorder", "writer alone", "rows/s", "higher",
                         {"aigw": s5["standalone"].get("rows_per_s")}))
        for case, probe in (s5.get("during_scenario_1") or {}).items():
            if probe and probe.get("available"):
                rows.append(_row("5 recorder", f"during 1 {case}", "queue max", "lower",
                                 {"aigw": probe.get("queue_depth_max")}))
                rows.append(_row("5 recorder", f"during 1 {case}", "flush p99 ms", "lower",
                                 {"aigw": (probe.get("flush_ms") or {}).get("p99")}))
    rows += _metric_rows(doc, "6", "6 soak", f"{params['s6_requests']} requests",
                         {}, [("req/s", "rps", "higher"), ("errors", "errors", "lower"),
                              ("RSS start MB", "rss_start_mb", "lower"), ("RSS end MB", "rss_end_mb", "lower"),
                              ("RSS growth %", "rss_growth_pct", "lower"),
                              ("RSS mid MB", "rss_mid_mb", "lower"),
                              ("2nd-half growth %", "rss_second_half_growth_pct", "lower"),
                              ("rows = requests", "rows.exactly_one_per_request", "")])
    return rows


def _workers_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """--workers N: scaling of blocking req/s, scenario 3 on N processes, and the one-stream cost."""
    out: list[dict[str, Any]] = []
    params = doc["params"]
    c = max(params["s1_concurrency"])
    for api in ("anthropic", "openai"):
        runs = _runs(doc, "1", api=api, concurrency=c)
        w, one = runs.get(WORKERS), runs.get("aigw")
        if w and one and one.get("rps"):
            ratio = round(w["rps"] / one["rps"], 3)
            out.append(_target(f"W.scaling.{api}.c{c}", f"workers: {api} c={c} req/s, {WORKERS}/aigw", ratio,
                               f">= {WORKERS_SCALING}", ratio >= WORKERS_SCALING and not w.get("errors")))
    w3 = _runs(doc, "3").get(WORKERS)
    if w3:
        p99 = _get(w3, "event_delay_ms.p99")
        out.append(_target("W.3", "workers: scenario 3 errors / event delay p99 (ms)", f"{w3.get('errors')} / {p99}",
                           f"0 / < {WORKERS_S3_P99_MS:g}", w3.get("errors") == 0 and p99 is not None
                           and p99 < WORKERS_S3_P99_MS))
    for interval in params.get("s7_intervals_ms") or ():
        runs = _runs(doc, "7", interval_ms=interval)
        m = _get(runs.get("mitmproxy") or {}, "event_delay_ms.mean")
        for name in ("aigw", WORKERS):
            a = _get(runs.get(name) or {}, "event_delay_ms.mean")
            if a is not None and m is not None:
                diff = round(a - m, 3)
                out.append(_target(f"7.delay.{name}.{interval:g}ms",
                                   f"7: one stream, {interval:g} ms apart: {name} mean - mitmproxy mean (ms/event)",
                                   diff, "<= 0.3", diff <= 0.3 and not runs[name].get("errors")))
    return out


def _target(tid: str, text: str, value: Any, threshold: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"id": tid, "target": text, "value": value, "threshold": threshold, "met": met, "note": note}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params = doc["params"]
    systems = doc["systems"]
    for scenario, kind_match in (("1", {}), ("4", {"kind": "blocking"})):
        for api in ("anthropic", "openai"):
            for c in params["s1_concurrency"]:
                runs = _runs(doc, scenario, api=api, concurrency=c, **kind_match)
                a, m = runs.get("aigw"), runs.get("mitmproxy")
                tid = f"{scenario}.throughput.{api}.c{c}"
                text = f"{scenario}: {api} c={c} throughput aigw/mitmproxy"
                if a and m and m.get("rps"):
                    ratio = round(a["rps"] / m["rps"], 3)
                    out.append(_target(tid, text, ratio, ">= 0.85", ratio >= 0.85 and not a.get("errors")))
                elif scenario == "4":
                    why = (doc["scenarios"].get("4_transparent_proxy") or {}).get("availability", {}).get("aigw")
                    out.append(_target(tid, text, None, ">= 0.85", None, why or "not measured"))
    for api in ("anthropic", "openai"):
        runs = _runs(doc, "2", api=api)
        a, m = runs.get("aigw"), runs.get("mitmproxy")
        if a and m and _get(a, "event_delay_ms.p50") is not None and _get(m, "event_delay_ms.p50") is not None:
            diff = round(_get(a, "event_delay_ms.p50") - _get(m, "event_delay_ms.p50"), 3)
            out.append(_target(f"2.delay.{api}", f"2: {api} added delay per event, aigw p50 - mitmproxy p50 (ms)",
                               diff, "<= 0.3", diff <= 0.3 and not a.get("errors")))
    a3 = _runs(doc, "3").get("aigw")
    if a3:
        out.append(_target("3.errors", "3: errors over all streams", a3.get("errors"), "= 0", a3.get("errors") == 0))
        p99 = _get(a3, "event_delay_ms.p99")
        out.append(_target("3.delay", "3: event delay p99 (ms)", p99, "< 50", p99 is not None and p99 < 50))
        rss = _get(a3, "procs.sut.rss_max_mb")
        out.append(_target("3.rss", "3: gateway RSS max (MB)", rss, "< 600", rss is not None and rss < 600))
    out += _workers_targets(doc)
    s5 = doc["scenarios"].get("5_recorder")
    if s5:
        rps = s5["standalone"].get("rows_per_s")
        out.append(_target("5.rows", "5: DuckDB writer rows/s (alone)", rps, ">= 20000", rps is not None
                           and rps >= 20000))
        probes = [p for p in (s5.get("during_scenario_1") or {}).values() if p and p.get("available")]
        if probes:
            qmax = max(p["queue_depth_max"] for p in probes)
            fmax = max((p.get("flush_ms") or {}).get("max") or 0 for p in probes)
            rate = max(p.get("records_per_s") or 0 for p in probes)
            cap = s5["standalone"].get("records_per_s") or 0
            # The writer keeps up when its queue stays below one batch and the offered rate is below what
            # it sustains alone; batch write times under load include waits for the GIL held by the loop.
            met = qmax < 5000 and rate < cap
            out.append(_target("5.bottleneck", "5: writer during 1: queue max / records/s vs capacity alone",
                               f"{qmax} / {rate:.0f} vs {cap:.0f}", "< one batch (5000) / below capacity", met,
                               f"batch write time max {fmax:.0f} ms (includes GIL waits behind the busy loop)"))
    soak = (doc["scenarios"].get("6_soak") or {}).get("systems", {}).get("aigw")
    if soak:
        growth = soak.get("rss_growth_pct")
        out.append(_target("6.rss", "6: RSS growth over the soak (%)", growth, "< 5", growth is not None
                           and growth < 5, f"second half alone: {soak.get('rss_second_half_growth_pct')} %"))
        rows = soak.get("rows") or {}
        out.append(_target("6.rows", "6: interception rows (new, ended, distinct) vs requests sent",
                           f"{rows.get('new_rows')}/{rows.get('new_ended')}/{rows.get('new_distinct_ids')} vs "
                           f"{rows.get('sent')}", "all equal", rows.get("exactly_one_per_request")))
    peer = systems.get("peer", {})
    if peer.get("available"):
        wins, total, lost = 0, 0, []
        for row in doc["table"]:
            vals = row["values"]
            if row["better"] not in ("higher", "lower") or row["metric"] == "CPU %" or \
                    vals.get("aigw") is None or vals.get("peer") is None:
                continue
            if row["metric"] == "errors" and vals["aigw"] == vals["peer"] == 0:
                continue
            total += 1
            ahead = vals["aigw"] > vals["peer"] if row["better"] == "higher" else vals["aigw"] < vals["peer"]
            wins += ahead
            if not ahead:
                lost.append(f"{row['scenario']} {row['case']} {row['metric']}")
        out.append(_target("peer", "aigw ahead of the peer (metrics both ran)", f"{wins}/{total}", "all",
                           wins == total and total > 0, "; ".join(lost[:10])))
    else:
        out.append(_target("peer", "aigw ahead of the peer", None, "all", None,
                           peer.get("reason", "peer not run")))
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def render(doc: dict[str, Any]) -> str:
    lines = []
    m = doc["machine"]
    lines.append(f"aigw benchmark {doc['timestamp']}{' (QUICK: figures not meaningful)' if doc['quick'] else ''}"
                 f" - {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, Python {m['python']}; "
                 "load generator, upstream and system share the CPUs")
    lines.append("systems:")
    for name in SYSTEMS:
        s = doc["systems"].get(name)
        if s is None:
            continue
        if s.get("available"):
            extra = "; ".join(s.get("notes") or [])
            detail = s.get("args") or s.get("argv") or (f"LiteLLM {s['litellm_version']}"
                                                        if s.get("litellm_version") else "")
            lines.append(f"  {name:10s} {detail}" + (f"  [{extra}]" if extra else ""))
        else:
            lines.append(f"  {name:10s} NOT RUN: {s.get('reason')}")
    lines.append("parameters:")
    for key, sc in doc["scenarios"].items():
        if isinstance(sc, dict) and "params" in sc:
            lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in sc["params"].items()))
            if "availability" in sc:
                lines.append("     availability: " + ", ".join(f"{k}: {v}" for k, v in sc["availability"].items()))
    systems = [s for s in SYSTEMS if s != OTEL or OTEL in doc["systems"]]
    ratios = [r for r in RATIOS if OTEL not in r or OTEL in doc["systems"]]
    head = f"{'scenario':18s} {'case':26s} {'metric':20s}" + "".join(f"{s:>13s}" for s in systems) + \
        "".join(f"{a + '/' + b:>16s}" for a, b in ratios)
    lines.append("")
    lines.append(head)
    lines.append("-" * len(head))
    for row in doc["table"]:
        vals = row["values"]
        line = f"{row['scenario']:18s} {row['case'][:26]:26s} {row['metric']:20s}"
        line += "".join(f"{_fmt(vals.get(s)):>13s}" for s in systems)
        line += "".join(f"{_fmt(row['ratios'].get(f'{a}/{b}')):>16s}" for a, b in ratios)
        lines.append(line)
    lines.append("")
    lines.append("targets:")
    for t in doc["targets"]:
        status = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        lines.append(f"  [{status:7s}] {t['target']}: {_fmt(t['value'])} (target {t['threshold']})"
                     + (f" - {t['note']}" if t.get("note") else ""))
    others = [r["other_cpu_pct"] for r in doc["runs"] if isinstance(r.get("other_cpu_pct"), int | float)]
    if others:
        mean = sum(others) / len(others)
        lines.append(f"background: CPU used by processes outside the benchmark during the runs: mean {mean:.0f} %, "
                     f"max {max(others):.0f} % of one CPU" + ("  (WARNING: noisy machine; compare ratios, rerun)"
                                                               if mean > 15 else ""))
    prof = doc["scenarios"].get("profile")
    if isinstance(prof, dict):
        for name, p in prof.items():
            if isinstance(p, dict) and p.get("self"):
                lines.append(f"profile {name} ({p['samples']} samples, idle {p.get('idle_pct')} %): top self: "
                             + ", ".join(f"{f} {v}%" for f, v in p["self"][:8]))
    return "\n".join(lines)
