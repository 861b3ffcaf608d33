"""Metrics (addons/sinks/metrics.py): values driven by records, and the exposition server's startup errors."""

from __future__ import annotations

import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from addons.flow.records import InterceptionEnd, InterceptionStart, PromptRecord, TokenUsageRecord, ToolUsageRecord
from addons.flow.state import FlowStates
from addons.sinks import metrics
from addons.sinks.metrics import Metrics, MetricsServerError, start_server

T = datetime(2026, 1, 5, tzinfo=UTC)


def value(metric: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(metric, labels) or 0.0


def test_interception_records_drive_the_metrics() -> None:
    user = str(uuid.uuid4())  # a fresh label value: the registry is process-wide
    iid = str(uuid.uuid4())
    sink = Metrics(FlowStates())
    sink(InterceptionStart(id=iid, initiator_id=user, api_key_id=None, provider="anthropic",
                           provider_name="anthropic", model="claude", client="Claude Code", client_session_id=None,
                           credential_kind="centralized", credential_hint=None, started_at=T,
                           metadata={"route": "/v1/messages", "method": "POST"}))
    assert value("coder_aibridged_interceptions_inflight", provider="anthropic", model="claude",
                 route="/v1/messages") >= 1
    sink(TokenUsageRecord(iid, "m", 25, 12, 100, 7, {"reasoning_tokens": 3, "flag": True}, T))
    sink(PromptRecord(iid, "m", "hi", T))
    sink(ToolUsageRecord(iid, "m", "t1", "get_weather", "{}", None, False, None, T))
    sink(InterceptionEnd(iid, T + timedelta(seconds=3), "completed"))

    common = {"provider": "anthropic", "model": "claude", "initiator_id": user, "client": "Claude Code"}
    assert value("coder_aibridged_interceptions_total", status="completed", route="/v1/messages", method="POST",
                 **common) == 1
    for token_type, n in (("input", 25), ("output", 12), ("cache_read_input_tokens", 100),
                          ("cache_write_input_tokens", 7), ("reasoning_tokens", 3)):
        assert value("coder_aibridged_tokens_total", type=token_type, **common) == n, token_type
    assert value("coder_aibridged_tokens_total", type="flag", **common) == 0  # booleans are not token counts
    assert value("coder_aibridged_prompts_total", **common) == 1
    assert value("coder_aibridged_non_injected_tool_selections_total", provider="anthropic", model="claude",
                 name="get_weather") >= 1
    assert iid not in sink.open


def test_proxy_counters_exist_for_the_proxy_addon() -> None:
    before = value("coder_aibridged_proxy_connect_sessions_total", type="tunneled")
    metrics.PROXY_CONNECTS.labels(type="tunneled").inc()
    assert value("coder_aibridged_proxy_connect_sessions_total", type="tunneled") == before + 1
    metrics.PROXY_AUTH_FAILURES.inc()
    assert value("coder_aibridged_proxy_auth_failures_total") >= 1


def test_server_serves_and_a_busy_port_is_a_clear_error() -> None:
    server = start_server("127.0.0.1:0")
    try:
        body = httpx.get(f"http://127.0.0.1:{server.port}/metrics", trust_env=False).text
        assert "coder_aibridged_interceptions_total" in body
        assert "process_resident_memory_bytes" in body
    finally:
        server.close()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{port}.*CODER_PROMETHEUS_ADDRESS"):
            start_server(f"127.0.0.1:{port}")


def test_the_startup_replay_is_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The writer replays an earlier run's spool as soon as it starts: its drops reach the metrics."""
    from addons.settings.config import Settings
    from addons.sinks.recorder import Recorder
    from addons.store.spool import SUFFIX, spool_dir

    db = tmp_path / "data" / "aibridge.duckdb"
    spooled = spool_dir(db)
    spooled.mkdir(parents=True, mode=0o700)
    (spooled / f"000000000000-{uuid.uuid4().hex}-2{SUFFIX}").write_bytes(b"{not json\n[\"NoSuchRecord\", {}]\n")
    dropped = value("coder_aibridged_recorder_dropped_records_total")
    recorder = Recorder(Settings(db=db))
    waiting: list[int] = []

    def hooks(writer) -> None:  # type: ignore[no-untyped-def]
        waiting.append(writer.outage.spooled)  # the replay has not begun: nothing can be missed
        metrics.chain_on_batch(writer)

    recorder.open(hooks)
    try:
        assert recorder.writer is not None
        deadline = time.monotonic() + 10
        while recorder.writer.outage.dropped < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.writer.outage.dropped == 2
    finally:
        recorder.done()
    assert waiting == [2]
    assert value("coder_aibridged_recorder_dropped_records_total") == dropped + 2
