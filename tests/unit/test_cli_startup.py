"""What a short CLI command loads: read-only commands never import the gateway's heavy stack.

Each case runs in a fresh interpreter (the test process has imported everything already)
and reports which of the watched top-level modules ended up in sys.modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from addons.store import db

REPO = Path(__file__).resolve().parents[2]
GATEWAY_STACK = {"mitmproxy", "boto3", "botocore", "prometheus_client", "genai_prices", "opentelemetry"}
WATCHED = GATEWAY_STACK | {"duckdb", "pydantic", "yaml", "importlib.metadata", "urllib.request"}

PROBE = """
import json, sys
from addons import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
watched = set(json.loads({watched!r}))
print(json.dumps(sorted(m for m in sys.modules if m in watched)), file=sys.stderr)
"""


def loaded(tmp_path: Path, *argv: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "OTEL_"))}
    env.update(CODER_AIBRIDGE_DB=str(tmp_path / "aibridge.duckdb"), PYTHONPATH=str(REPO))
    code = PROBE.format(watched=json.dumps(sorted(WATCHED)))
    result = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.fixture
def database(tmp_path: Path) -> Path:
    db.connect(tmp_path / "aibridge.duckdb").close()
    return tmp_path


def test_help_and_version_load_nothing_heavy(tmp_path: Path) -> None:
    assert loaded(tmp_path, "--help") == set()
    assert loaded(tmp_path, "interceptions", "list", "--help") == set()
    assert loaded(tmp_path, "--version") == {"importlib.metadata"}  # the version is looked up when asked


@pytest.mark.parametrize("argv", [["interceptions", "list"], ["sessions", "list"], ["users", "list"]])
def test_local_reads_load_duckdb_but_not_the_gateway(database: Path, argv: list[str]) -> None:
    modules = loaded(database, *argv)
    assert "duckdb" in modules
    assert not modules & (GATEWAY_STACK | {"pydantic", "yaml", "urllib.request"})


def test_yaml_schema_is_loaded_only_for_a_config_file(database: Path) -> None:
    (database / "aigw.yaml").write_text("aibridge:\n  retention: 30d\n")
    modules = loaded(database, "config", "check", "--config", str(database / "aigw.yaml"))
    assert {"pydantic", "yaml"} <= modules
    assert not modules & GATEWAY_STACK
    assert not loaded(database, "config", "check") & {"pydantic", "yaml"}
