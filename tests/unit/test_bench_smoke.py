"""`scripts/bench --quick` runs end to end and writes well-formed results.

Benchmarks are not tests: nothing here looks at a timing figure, only at the
shape of the JSON (every scenario ran, every system is accounted for).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_quick_writes_results(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CODER_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    result = subprocess.run([str(REPO / "scripts" / "bench"), "--quick", "--json", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, result.stdout[-2000:]
    doc = json.loads(files[0].read_text())

    assert doc["version"] == 1 and doc["quick"] is True
    assert {"cpus", "cpu_model", "python"} <= set(doc["machine"])
    # Every system is either measured or says why not; the peer is skipped in quick mode.
    assert doc["systems"]["direct"]["available"]
    assert doc["systems"]["mitmproxy"]["available"], doc["systems"]["mitmproxy"]
    assert doc["systems"]["aigw"]["available"], doc["systems"]["aigw"]
    assert doc["systems"]["peer"]["available"] is False and doc["systems"]["peer"]["reason"]

    scenarios = doc["scenarios"]
    for key in ("1_blocking", "2_streaming", "3_many_agents", "4_transparent_proxy", "5_recorder", "6_soak"):
        assert key in scenarios and scenarios[key]["params"], key
    assert set(scenarios["4_transparent_proxy"]["availability"]) >= {"mitmproxy", "aigw"}
    assert scenarios["5_recorder"]["standalone"]["rows_per_s"] > 0
    assert set(scenarios["6_soak"]["systems"]) >= {"aigw"}

    runs = doc["runs"]
    for scenario in ("1", "2", "3"):
        measured = {r["system"] for r in runs if r["scenario"] == scenario}
        assert measured >= {"direct", "mitmproxy", "aigw"}, (scenario, measured)
    for r in runs:
        if r["scenario"] in ("1", "2", "3"):
            assert "failed" not in r, r
            assert r["requests"] > 0 and "latency_ms" in r and "procs" in r
    assert any(r["scenario"] == "2" and r.get("event_delay_ms", {}).get("p50") is not None for r in runs)

    table = doc["table"]
    assert table and all({"scenario", "case", "metric", "values", "ratios"} <= set(row) for row in table)
    assert any(row["ratios"]["aigw/mitmproxy"] is not None for row in table)
    assert {t["id"].split(".")[0] for t in doc["targets"]} >= {"1", "2", "3", "5", "6", "peer"}
    assert all(t["met"] in (True, False, None) for t in doc["targets"])
    # The table printed on stdout is the one in the file.
    assert "aigw/mitmproxy" in result.stdout and "targets:" in result.stdout
