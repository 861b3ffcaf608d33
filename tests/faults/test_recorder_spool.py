"""Recording under a failing database, end to end: the real gateway, its WAL stopped from growing.

The fault is a file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets) lowered on the running gateway
with prlimit(2) to the WAL's current size: DuckDB's next commit fails with EFBIG ("File too large"),
as it would on a full disk, while the small spool files still fit. The gateway ignores SIGXFSZ, so
the limit is an error it handles, not a signal that kills it. Lifting the limit is the repair.
"""

from __future__ import annotations

import resource
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_operations import messages, wait_until
from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, clean_env, free_port, provider_env

pytestmark = pytest.mark.e2e

MIN_LIMIT = 64 * 1024  # below this the gateway's own log could hit the limit too
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "spool me"}]}


def limit_files(gw: Gateway, size: int | None) -> None:
    """Cap (or, with None, uncap) the size of every file the gateway writes."""
    assert gw.proc is not None
    soft = resource.RLIM_INFINITY if size is None else size
    resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))


def wal(gw: Gateway) -> Path:
    return gw.db.with_name(gw.db.name + ".wal")


def spool_files(gw: Gateway) -> list[Path]:
    directory = gw.db.with_name(gw.db.name + ".spool")
    return sorted(directory.glob("*.batch")) if directory.exists() else []


def spooled(gw: Gateway) -> int:
    """Records in the spool, from the batch file names."""
    return sum(int(f.stem.rsplit("-", 1)[1]) for f in spool_files(gw))


def recorded(gw: Gateway) -> int:
    """Records in the database: each interception's start and end, prompts, token usages."""
    return gw.query("select (select count(*) + count(ended_at) from aibridge_interceptions) + "
                    "(select count(*) from aibridge_user_prompts) + "
                    "(select count(*) from aibridge_token_usages) as n")[0]["n"]


def metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=5).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("coder_aibridged_recorder_")}


def readyz(gw: Gateway) -> httpx.Response:
    return httpx.get(gw.url + "/readyz", trust_env=False, timeout=5)


@pytest.fixture
def gw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Gateway]:
    port = free_port()
    gateway = Gateway(tmp_path, clean_env(**provider_env(upstream.url), CODER_PROMETHEUS_ENABLE="true",
                                          CODER_PROMETHEUS_ADDRESS=f"127.0.0.1:{port}"))
    gateway.metrics_port = port  # type: ignore[attr-defined]
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    if gateway.proc is not None and gateway.proc.poll() is None:
        limit_files(gateway, None)
        gateway.stop()


def send(gw: Gateway, n: int) -> None:
    for _ in range(n):
        assert messages(gw, gw.user_key, BODY).status_code == 200  # type: ignore[attr-defined]


def fail_the_wal(gw: Gateway) -> int:
    """Limit the files to the WAL's size, then send requests until the recorder reports the failure;
    returns how many were sent."""
    send(gw, 10)
    gw.wait_for("select count(ended_at) as n from aibridge_interceptions", lambda r: r[0]["n"] == 10)
    assert readyz(gw).json() == {"ready": True}
    limit_files(gw, max(wal(gw).stat().st_size, MIN_LIMIT))
    sent = 10
    while readyz(gw).status_code == 200:
        send(gw, 1)
        sent += 1
        assert sent < 400, "the WAL never hit the file-size limit"
    return sent


def counts(gw: Gateway) -> dict[str, Any]:
    return gw.query(
        "select (select count(*) from aibridge_interceptions) as interceptions, "
        "(select count(ended_at) from aibridge_interceptions where status = 'completed') as completed, "
        "(select count(*) from aibridge_user_prompts where prompt = 'spool me') as prompts, "
        "(select count(*) from aibridge_token_usages) as tokens")[0]


def test_failing_database_spools_keeps_serving_and_replays_every_row(gw: Gateway) -> None:
    port: int = gw.metrics_port  # type: ignore[attr-defined]
    sent = fail_the_wal(gw)
    send(gw, 15)  # served while the database fails
    sent += 15

    assert httpx.get(gw.url + "/healthz", trust_env=False).status_code == 200
    not_ready = readyz(gw)
    assert not_ready.status_code == 503
    reason = not_ready.json()["reason"]
    assert not_ready.json()["ready"] is False
    # /readyz is unauthenticated: a generic reason, never the database's error (paths, values).
    assert reason.startswith("recording to the database is failing; records are spooled (")
    assert "File too large" not in reason and str(gw.workdir) not in reason
    wait_until(lambda: metrics(port)["coder_aibridged_recorder_spooled_records"] > 0, what="spooled records")
    during = metrics(port)
    assert during["coder_aibridged_recorder_write_failures_total"] >= 1
    assert during["coder_aibridged_recorder_dropped_records_total"] == 0
    files = spool_files(gw)
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    # Every record of every request is in the database or the spool (4 each: start, prompt, tokens, end).
    wait_until(lambda: spooled(gw) + recorded(gw) == 4 * sent, what="every record in the db or the spool")
    assert spooled(gw) == metrics(port)["coder_aibridged_recorder_spooled_records"]

    limit_files(gw, None)
    wait_until(lambda: readyz(gw).status_code == 200, timeout=30, what="the recorder to recover")
    wait_until(lambda: not spool_files(gw), what="the replay")
    assert counts(gw) == {"interceptions": sent, "completed": sent, "prompts": sent, "tokens": sent}
    after = metrics(port)
    assert after["coder_aibridged_recorder_spooled_records"] == 0
    assert after["coder_aibridged_recorder_dropped_records_total"] == 0
    assert not spool_files(gw)
    assert readyz(gw).json() == {"ready": True}
    assert gw.stop() == 0
    log = gw.output()
    assert "ERROR aigw.store: database write failed" in log and "spool replayed" in log
    assert "Traceback" not in log


def test_spool_survives_a_restart_and_is_replayed_before_anything_else(gw: Gateway) -> None:
    sent = fail_the_wal(gw)
    send(gw, 5)
    sent += 5
    # Stopped cleanly while the database still fails: what is left in memory goes to the spool too.
    assert gw.stop() == 0
    assert spooled(gw) > 0
    gw.start()  # no limit now
    assert "spooled by an earlier run: replaying them" in gw.output()
    wait_until(lambda: not spool_files(gw), what="the replay")
    send(gw, 1)
    gw.wait_for("select count(ended_at) as n from aibridge_interceptions", lambda r: r[0]["n"] == sent + 1)
    assert counts(gw) == {"interceptions": sent + 1, "completed": sent + 1, "prompts": sent + 1,
                          "tokens": sent + 1}
