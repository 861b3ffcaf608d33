"""`scripts/bench --quick --workers 2` measures the workers and reports their scaling (structure only:
benchmarks are not tests, nothing here looks at a timing figure)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_quick_with_workers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CODER_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    result = subprocess.run([str(REPO / "scripts" / "bench"), "--quick", "--workers", "2", "--scenarios", "1,3,7",
                             "--systems", "mitmproxy,aigw", "--json", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["systems"]["aigw-workers"]["available"], doc["systems"]["aigw-workers"]
    assert "--workers 2" in doc["systems"]["aigw-workers"]["args"]
    runs = doc["runs"]
    for scenario in ("1", "3", "7"):
        measured = {r["system"] for r in runs if r["scenario"] == scenario}
        assert measured >= {"mitmproxy", "aigw", "aigw-workers"}, (scenario, measured)
    for r in runs:
        assert "failed" not in r, r
    assert all(r["event_delay_ms"]["mean"] is not None for r in runs if r["scenario"] == "7")
    ids = {t["id"] for t in doc["targets"]}
    assert {"W.scaling.anthropic.c4", "W.scaling.openai.c4", "W.3", "7.delay.aigw.2ms",
            "7.delay.aigw-workers.20ms"} <= ids
    assert any(row["ratios"].get("aigw-workers/aigw") is not None for row in doc["table"])
    assert "aigw-workers/aigw" in result.stdout
