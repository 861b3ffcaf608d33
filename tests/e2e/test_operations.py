"""Operating the gateway end to end: dumps, structured logs, metrics, retention, shutdown, mitmweb, startup errors.

Each test drives a real gateway subprocess against the fake upstream.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from addons.store.recovery import RECOVERED_ERROR
from addons.store.schema import CHILD_TABLES
from tests.fakes.upstream import FakeUpstream, Gate, Reply, anthropic_events
from tests.gateway_process import (
    ANTHROPIC_PROVIDER_KEY,
    OPENAI_PROVIDER_KEY,
    REPO,
    Gateway,
    clean_env,
    free_port,
    provider_env,
    wait_until,
)

pytestmark = pytest.mark.e2e

STREAM_BODY = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
               "messages": [{"role": "user", "content": "hi there"}]}
TOOLS = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]



def messages(gw: Gateway, key: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", json=body, trust_env=False,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=30, **kw)


def ended(gw: Gateway, user: str, n: int) -> list[dict[str, Any]]:
    """The user's ended interceptions, oldest first, once there are at least n."""
    sql = ("select i.* from aibridge_interceptions i join users u on u.id = i.initiator_id "
           f"where u.name = '{user}' and ended_at is not null order by started_at")
    rows = gw.wait_for(sql, lambda r: len(r) >= n)
    assert len(rows) >= n, f"expected {n} ended interceptions for {user}, got {rows}"
    return rows


def held_stream(upstream: FakeUpstream, gate_timeout: float = 30) -> Gate:
    """Queue a stream that sends message_start, then waits for the gate."""
    events = anthropic_events(STREAM_BODY)
    gate = Gate(timeout=gate_timeout)
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[events[0], gate, *events[1:]]))
    return gate


class StreamClient:
    """A client reading a streaming response on a thread, so the test can act while it runs."""

    def __init__(self, gw: Gateway, key: str) -> None:
        self.first = threading.Event()
        self.body = b""
        self.error: BaseException | None = None
        self.client = httpx.Client(trust_env=False, timeout=60)
        self.thread = threading.Thread(target=self.run, args=(gw, key), daemon=True)
        self.thread.start()

    def run(self, gw: Gateway, key: str) -> None:
        try:
            with self.client.stream("POST", f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", json=STREAM_BODY,
                                    headers={"x-api-key": key}) as r:
                for chunk in r.iter_raw():
                    self.body += chunk
                    self.first.set()
        except BaseException as e:  # reported to the test
            self.error = e
        finally:
            self.first.set()

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        self.client.close()


def new_gateway(tmp_path: Path, upstream: FakeUpstream, *args: str, command: str = "serve",
                **env: str) -> Gateway:
    gw = Gateway(tmp_path, clean_env(**provider_env(upstream.url), **env), extra_args=args, command=command)
    gw.user_key = gw.create_key("alice")  # type: ignore[attr-defined]
    return gw


def offline_query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = duckdb.connect(str(db), read_only=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------- one gateway with everything on


@pytest.fixture(scope="module")
def ops(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("ops")
    metrics_port = free_port()
    gw = Gateway(workdir, clean_env(
        **provider_env(upstream.url),
        CODER_AIBRIDGE_PROVIDER_0_DUMP_DIR=str(workdir / "dumps"),
        CODER_AIBRIDGE_STRUCTURED_LOGGING="true",
        CODER_LOGGING_JSON=str(workdir / "gateway.jsonl"),
        CODER_PROMETHEUS_ENABLE="true",
        CODER_PROMETHEUS_ADDRESS=f"127.0.0.1:{metrics_port}",
    ))
    gw.dumps = workdir / "dumps" / "anthropic"  # type: ignore[attr-defined]
    gw.jsonl = workdir / "gateway.jsonl"  # type: ignore[attr-defined]
    gw.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    gw.keys = {name: gw.create_key(name) for name in ("dumper", "logger", "counter")}  # type: ignore[attr-defined]
    gw.start()
    yield gw
    assert gw.stop() == 0


def dump_files(gw: Gateway, iid: str) -> tuple[Path, Path]:
    req = wait_until(lambda: next(iter(gw.dumps.glob(f"*-{iid}.req.txt")), None),  # type: ignore[attr-defined]
                     what="the request dump")
    return req, req.with_name(req.name.replace(".req.txt", ".resp.txt"))


def test_dumps_hold_the_redacted_exchange_with_owner_only_permissions(ops: Gateway, upstream) -> None:
    key = ops.keys["dumper"]  # type: ignore[attr-defined]
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "tools": TOOLS,
            "messages": [{"role": "user", "content": "weather?"}]}
    assert messages(ops, key, body, cookies={"session": "cookie-secret-value"}).status_code == 200
    with httpx.stream("POST", f"{ops.url}/api/v2/aibridge/anthropic/v1/messages", json=STREAM_BODY,
                      headers={"x-api-key": key}, trust_env=False) as r:
        streamed = r.read()
    blocking, streaming = ended(ops, "dumper", 2)[-2:]

    req_path, resp_path = dump_files(ops, blocking["id"])
    started = datetime.fromisoformat(str(blocking["started_at"])).astimezone(UTC)
    assert req_path.name.startswith(started.strftime("%Y%m%dT%H%M%S"))
    request = wait_until(lambda: req_path.read_bytes(), what="request dump content")
    head, _, sent_body = request.partition(b"\r\n\r\n")
    assert head.startswith(f"POST {upstream.url}/v1/messages HTTP/1.1".encode())
    assert b"\r\nx-api-key: [REDACTED]" in head and b"\r\nCookie: [REDACTED]" in head
    assert json.loads(sent_body)["messages"] == body["messages"]
    response = wait_until(lambda: resp_path.read_bytes().endswith(b"}") and resp_path.read_bytes(),
                          what="response dump content")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(response.partition(b"\r\n\r\n")[2])["content"][0]["type"] == "tool_use"

    _, stream_resp = dump_files(ops, streaming["id"])
    dumped = wait_until(lambda: b"message_stop" in stream_resp.read_bytes() and stream_resp.read_bytes(),
                        what="streamed response dump")
    assert dumped.partition(b"\r\n\r\n")[2] == streamed  # as received, event for event

    everything = b"".join(p.read_bytes() for p in ops.dumps.rglob("*.txt"))  # type: ignore[attr-defined]
    for secret in (ANTHROPIC_PROVIDER_KEY, key, "cookie-secret-value"):
        assert secret.encode() not in everything
    for path in (req_path, resp_path, stream_resp):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(req_path.parent.stat().st_mode) == 0o700
    # Only the instance with a DUMP_DIR dumps.
    assert not (ops.workdir / "dumps" / "openai").exists()


def test_streamed_dump_is_readable_while_running_and_after_a_disconnect(ops: Gateway, upstream) -> None:
    key = ops.keys["dumper"]  # type: ignore[attr-defined]
    before = len(ended(ops, "dumper", 0))
    gate = held_stream(upstream)
    try:
        with httpx.stream("POST", f"{ops.url}/api/v2/aibridge/anthropic/v1/messages", json=STREAM_BODY,
                          headers={"x-api-key": key}, trust_env=False) as r:
            chunks = r.iter_raw()  # keep the iterator: dropping it closes the response
            next(chunks)
            iid = wait_until(lambda: ops.query(
                "select id from aibridge_interceptions where ended_at is null and "
                "initiator_id = (select id from users where name = 'dumper')"), what="the open interception")[0]["id"]
            _, resp_path = dump_files(ops, iid)
            # The stream is still running, and its dump already holds what passed so far.
            running = wait_until(lambda: b"message_start" in resp_path.read_bytes() and resp_path.read_bytes(),
                                 what="the partial dump")
            assert b"message_stop" not in running
        # The client went away mid-stream.
        row = ended(ops, "dumper", before + 1)[-1]
        assert row["id"] == iid and row["status"] == "cancelled"
    finally:
        gate.open()
    final = wait_until(lambda: b"[aigw: response ended early" in resp_path.read_bytes() and resp_path.read_bytes(),
                       what="the end-of-dump note")
    assert b"message_start" in final and b"message_stop" not in final


def test_passthrough_requests_are_dumped_too(ops: Gateway, upstream) -> None:
    key = ops.keys["dumper"]  # type: ignore[attr-defined]
    r = httpx.get(f"{ops.url}/api/v2/aibridge/anthropic/v1/models", headers={"x-api-key": key}, trust_env=False)
    assert r.status_code == 200
    passthrough = ops.dumps / "passthrough"  # type: ignore[attr-defined]
    resp = wait_until(lambda: [p for p in passthrough.glob("*.resp.txt") if b"fake-model" in p.read_bytes()],
                      what="the passthrough dump")
    req = resp[0].with_name(resp[0].name.replace(".resp.txt", ".req.txt"))
    assert req.read_bytes().startswith(b"GET ") and ANTHROPIC_PROVIDER_KEY.encode() not in req.read_bytes()


def log_records(gw: Gateway) -> list[dict[str, Any]]:
    lines = gw.jsonl.read_text().splitlines()  # type: ignore[attr-defined]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= r.keys(), r
    return records


def test_structured_log_has_one_record_per_row(ops: Gateway, upstream) -> None:
    key = ops.keys["logger"]  # type: ignore[attr-defined]
    with httpx.stream("POST", f"{ops.url}/api/v2/aibridge/anthropic/v1/messages", trust_env=False,
                      headers={"x-api-key": key},
                      json={**STREAM_BODY, "thinking": {"type": "enabled", "budget_tokens": 1024}}) as r:
        r.read()
    assert messages(ops, key, {"model": "claude-haiku-4-5", "max_tokens": 50, "tools": TOOLS,
                               "messages": [{"role": "user", "content": "weather?"}]}).status_code == 200
    stream_row, tool_row = ended(ops, "logger", 2)
    user_id = stream_row["initiator_id"]

    def mine() -> list[dict[str, Any]]:
        return [r for r in log_records(ops) if r["msg"] == "interception log"
                and r.get("interception_id") in (stream_row["id"], tool_row["id"])]

    found = wait_until(lambda: len(mine()) >= 10 and mine(), what="the structured log records")
    by_type: dict[tuple[str, str], dict[str, Any]] = {}
    for r in found:
        by_type[(r["interception_id"], r["record_type"])] = r
    assert sorted(t for i, t in by_type if i == stream_row["id"]) == [
        "interception_end", "interception_start", "model_thought", "prompt_usage", "token_usage"]
    assert sorted(t for i, t in by_type if i == tool_row["id"]) == [
        "interception_end", "interception_start", "prompt_usage", "token_usage", "tool_usage"]
    assert len(found) == 10  # exactly one record per recorded row

    start = by_type[(stream_row["id"], "interception_start")]
    assert (start["initiator_id"], start["provider"], start["provider_name"], start["model"]) == (
        user_id, "anthropic", "anthropic", "claude-sonnet-4-5")
    assert start["client"] == stream_row["client"] and start["metadata"]["route"] == "/v1/messages"
    assert start["started_at"].endswith("Z") and start["level"] == "INFO" and start["logger"] == "aigw.interceptions"
    tokens = by_type[(stream_row["id"], "token_usage")]
    assert (tokens["input_tokens"], tokens["output_tokens"], tokens["cache_read_input_tokens"],
            tokens["cache_write_input_tokens"]) == (25, 12, 100, 7)
    assert by_type[(stream_row["id"], "prompt_usage")]["prompt"] == "hi there"
    assert by_type[(stream_row["id"], "model_thought")]["content"] == "Let me think."
    end = by_type[(stream_row["id"], "interception_end")]
    assert end["ended_at"].endswith("Z") and end["status"] == "completed"
    tool = by_type[(tool_row["id"], "tool_usage")]
    assert (tool["tool"], json.loads(tool["input"]), tool["injected"], tool["server_url"]) == (
        "get_weather", {"x": 1}, False, None)
    assert tool["created_at"].endswith("Z")

    text = ops.jsonl.read_text()  # type: ignore[attr-defined]
    for secret in (ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY, key):
        assert secret not in text


def scrape(gw: Gateway) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(gw.metrics_url, trust_env=False).text  # type: ignore[attr-defined]
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def sample(samples: dict[str, list[tuple[dict[str, str], float]]], metric: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(metric, []) if all(got.get(k) == x for k, x in labels.items()))


def test_metrics_after_known_traffic(ops: Gateway, upstream) -> None:
    key = ops.keys["counter"]  # type: ignore[attr-defined]
    before = scrape(ops)
    passthrough_before = sample(before, "coder_aibridged_passthrough_total", provider="openai", route="/models",
                                method="GET")
    with httpx.stream("POST", f"{ops.url}/api/v2/aibridge/anthropic/v1/messages", json=STREAM_BODY,
                      headers={"x-api-key": key}, trust_env=False) as r:
        r.read()
    assert messages(ops, key, {"model": "claude-sonnet-4-5", "max_tokens": 50, "tools": TOOLS,
                               "messages": [{"role": "user", "content": "weather?"}]}).status_code == 200
    upstream.queue(Reply(status=400, chunks=[json.dumps({"type": "error", "error": {
        "type": "invalid_request_error", "message": "nope"}}).encode()]))
    assert messages(ops, key, {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}).status_code == 400
    r = httpx.get(f"{ops.url}/api/v2/aibridge/openai/v1/models", headers={"authorization": f"Bearer {key}"},
                  trust_env=False)
    assert r.status_code == 200
    user_id = ended(ops, "counter", 3)[0]["initiator_id"]

    def settled() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        s = scrape(ops)
        return s if sample(s, "coder_aibridged_interceptions_total", initiator_id=user_id) >= 3 else None

    after = wait_until(settled, what="the interception metrics")
    common = {"provider": "anthropic", "model": "claude-sonnet-4-5", "initiator_id": user_id}
    assert sample(after, "coder_aibridged_interceptions_total", status="completed", route="/v1/messages",
                  method="POST", **common) == 2
    assert sample(after, "coder_aibridged_interceptions_total", status="failed", **common) == 1
    assert sample(after, "coder_aibridged_tokens_total", type="input", **common) == 50
    assert sample(after, "coder_aibridged_tokens_total", type="output", **common) == 24
    assert sample(after, "coder_aibridged_tokens_total", type="cache_read_input_tokens", **common) == 200
    assert sample(after, "coder_aibridged_tokens_total", type="cache_write_input_tokens", **common) == 14
    assert sample(after, "coder_aibridged_prompts_total", **common) == 2  # the failed call had no prompt
    assert sample(after, "coder_aibridged_non_injected_tool_selections_total", name="get_weather") >= 1
    assert sample(after, "coder_aibridged_passthrough_total", provider="openai", route="/models",
                  method="GET") == passthrough_before + 1
    assert sample(after, "coder_aibridged_interceptions_inflight", provider="anthropic",
                  model="claude-sonnet-4-5") == 0
    assert sample(after, "coder_aibridged_interceptions_duration_seconds_count", provider="anthropic",
                  model="claude-sonnet-4-5") >= 3
    assert sample(after, "coder_aibridged_recorder_write_seconds_count") > 0
    assert sample(after, "coder_aibridged_recorder_records_written_total") > 0
    assert "coder_aibridged_recorder_queue_depth" in after
    assert {labels["type"] for labels, _ in after["coder_aibridged_proxy_connect_sessions_total"]} == {
        "mitm", "tunneled"}
    assert "coder_aibridged_proxy_auth_failures_total" in after


# --------------------------------------------------------------------------- retention


def test_retention_purges_with_an_injected_clock(tmp_path: Path, upstream) -> None:
    clock = tmp_path / "clock"
    clock.write_text(datetime.now(UTC).isoformat())
    gw = new_gateway(tmp_path, upstream, "--set", "aigw_retention_interval=200ms", AIGW_TEST_CLOCK_FILE=str(clock))
    # Rows from long ago, written before the gateway starts: purged by the purge at start.
    conn = duckdb.connect(str(gw.db))
    old_id = "00000000-0000-4000-8000-000000000001"
    long_ago = datetime.now(UTC) - timedelta(days=100)
    conn.execute("insert into aibridge_interceptions (id, initiator_id, provider, provider_name, credential_kind, "
                 "started_at, ended_at, status) values (?, (select id from users limit 1), 'anthropic', "
                 "'anthropic', 'centralized', ?, ?, 'completed')", [old_id, long_ago, long_ago])
    conn.execute("insert into aibridge_user_prompts values (?, null, 'old prompt', ?)", [old_id, long_ago])
    conn.close()
    gw.start()
    try:
        wait_until(lambda: not gw.query(f"select 1 from aibridge_interceptions where id = '{old_id}'"),
                   what="the purge at start")
        assert not gw.query(f"select 1 from aibridge_user_prompts where interception_id = '{old_id}'")

        key = gw.user_key  # type: ignore[attr-defined]
        with httpx.stream("POST", f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", json={
                **STREAM_BODY, "thinking": {"type": "enabled", "budget_tokens": 1024}},
                headers={"x-api-key": key}, trust_env=False) as r:
            r.read()
        done_id = ended(gw, "alice", 1)[0]["id"]
        gate = held_stream(upstream)
        client = StreamClient(gw, key)
        client.first.wait(10)
        open_id = wait_until(lambda: gw.query("select id from aibridge_interceptions where ended_at is null"),
                             what="the open interception")[0]["id"]

        # Move the clock 61 days on: the ended interception and all its rows go, the open one stays.
        clock.write_text((datetime.now(UTC) + timedelta(days=61)).isoformat())
        wait_until(lambda: not gw.query(f"select 1 from aibridge_interceptions where id = '{done_id}'"),
                   what="the purge of the ended interception")
        for table in CHILD_TABLES:
            assert not gw.query(f"select 1 from {table} where interception_id = '{done_id}'"), table
        assert gw.query(f"select id from aibridge_interceptions where id = '{open_id}'"), "in flight: kept"

        gate.open()
        client.join()
        wait_until(lambda: not gw.query(f"select 1 from aibridge_interceptions where id = '{open_id}'"),
                   what="the purge once it ended")
        for table in CHILD_TABLES:
            assert not gw.query(f"select 1 from {table} where interception_id = '{open_id}'"), table
    finally:
        assert gw.stop() == 0
    assert "retention: purged" in gw.output()


# --------------------------------------------------------------------------- shutdown and crashes


def test_sigterm_lets_an_in_flight_stream_finish(tmp_path: Path, upstream) -> None:
    gw = new_gateway(tmp_path, upstream, "--set", "aigw_shutdown_grace=20s").start()
    gate = held_stream(upstream)
    client = StreamClient(gw, gw.user_key)  # type: ignore[attr-defined]
    try:
        assert client.first.wait(10) and b"message_start" in client.body
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        # No new connections while draining.
        wait_until(lambda: _refused(gw), what="the listener to close")
        gate.open()
        client.join()
        assert client.error is None and client.body.rstrip().endswith(b'data: {"type": "message_stop"}')
        assert gw.proc.wait(20) == 0
    finally:
        gate.open()
        gw.stop()
    assert "Traceback" not in gw.output()
    rows = offline_query(gw.db, "select status from aibridge_interceptions")
    assert rows == [("completed",)]
    assert offline_query(gw.db, "select input_tokens, output_tokens from aibridge_token_usages") == [(25, 12)]


def _refused(gw: Gateway) -> bool:
    try:
        return httpx.get(gw.url + "/healthz", timeout=1, trust_env=False).status_code == 503
    except httpx.HTTPError:
        return True


def test_sigterm_ends_streams_still_running_after_the_grace_period(tmp_path: Path, upstream) -> None:
    gw = new_gateway(tmp_path, upstream, "--set", "aigw_shutdown_grace=1s").start()
    gate = held_stream(upstream)
    client = StreamClient(gw, gw.user_key)  # type: ignore[attr-defined]
    try:
        assert client.first.wait(10)
        assert gw.proc is not None
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(20) == 0
        assert time.monotonic() - started < 10
    finally:
        gate.open()
        client.join()
        gw.stop()
    assert "Traceback" not in gw.output() and "grace period of 1s over" in gw.output()
    rows = offline_query(gw.db, "select status, metadata->>'error' from aibridge_interceptions")
    assert len(rows) == 1 and rows[0][0] == "cancelled" and "shut down" in rows[0][1]
    assert offline_query(gw.db, "select input_tokens, output_tokens from aibridge_token_usages") == [(25, 1)]


def test_sigkill_then_restart_finds_a_consistent_database(tmp_path: Path, upstream) -> None:
    gw = new_gateway(tmp_path, upstream).start()
    key = gw.user_key  # type: ignore[attr-defined]
    for _ in range(3):
        assert messages(gw, key, {"model": "m", "max_tokens": 5, "tools": TOOLS,
                                  "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    ended(gw, "alice", 3)
    gate = held_stream(upstream)
    client = StreamClient(gw, key)
    try:
        assert client.first.wait(10)
        open_id = wait_until(lambda: gw.query("select id from aibridge_interceptions where ended_at is null"),
                             what="the open interception")[0]["id"]
        gw.stop(signal.SIGKILL)
    finally:
        gate.open()
        client.join()
    gw.start()
    try:
        for table in CHILD_TABLES:
            orphans = gw.query(f"select count(*) as n from {table} where interception_id not in "
                               "(select id from aibridge_interceptions)")
            assert orphans == [{"n": 0}], table
        rows = gw.query("select id, status, ended_at, metadata->>'error' as error from aibridge_interceptions "
                        "order by started_at")
        assert len(rows) == 4 and all(r["ended_at"] for r in rows)
        assert [r["status"] for r in rows[:3]] == ["completed"] * 3
        assert (rows[3]["id"], rows[3]["status"], rows[3]["error"]) == (open_id, "failed", RECOVERED_ERROR)
        assert len(gw.query("select * from aibridge_tool_usages")) == 3
    finally:
        assert gw.stop() == 0


# --------------------------------------------------------------------------- bad input and faults


def serve_fails(tmp_path: Path, upstream: FakeUpstream, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    env = {"CODER_AIBRIDGE_DB": str(tmp_path / "db.duckdb"), "CODER_AIBRIDGE_LISTEN": f"127.0.0.1:{free_port()}",
           **env}
    result = subprocess.run([sys.executable, "-m", "addons.cli", "serve", *args], cwd=tmp_path, text=True,
                            capture_output=True, timeout=60, env=clean_env(**provider_env(upstream.url), **env))
    assert result.returncode != 0, result.stderr
    return result


def test_startup_errors_are_one_clear_line(tmp_path: Path, upstream) -> None:
    result = serve_fails(tmp_path, upstream, CODER_AIBRIDGE_RETENTION="ninety days")
    assert "CODER_AIBRIDGE_RETENTION" in result.stderr and "invalid duration" in result.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = serve_fails(tmp_path, upstream, "--log-json", str(blocker / "gw.log"))
    assert result.stderr.strip().count("\n") == 0
    assert "cannot open log file" in result.stderr and "--log-json" in result.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve_fails(tmp_path, upstream, CODER_PROMETHEUS_ENABLE="true",
                             CODER_PROMETHEUS_ADDRESS=f"127.0.0.1:{port}")
    assert f"cannot serve Prometheus metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr

    result = serve_fails(tmp_path, upstream, "--set", "no_such_option=1")
    assert result.stderr.strip().count("\n") == 0
    assert "no_such_option" in result.stderr and "Traceback" not in result.stderr


def test_locked_database_names_the_process_holding_it(ops: Gateway, upstream, tmp_path: Path) -> None:
    assert ops.proc is not None
    result = serve_fails(tmp_path, upstream, CODER_AIBRIDGE_DB=str(ops.db))
    assert f"is locked by another process (PID {ops.proc.pid}" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_dump_dir_warns_once_and_never_affects_requests(tmp_path: Path, upstream) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    gw = new_gateway(tmp_path, upstream, CODER_AIBRIDGE_PROVIDER_0_DUMP_DIR=str(blocker / "dumps")).start()
    try:
        for _ in range(3):
            assert messages(gw, gw.user_key, {"model": "m", "max_tokens": 5,  # type: ignore[attr-defined]
                                              "messages": [{"role": "user", "content": "x"}]}).status_code == 200
        assert [r["status"] for r in ended(gw, "alice", 3)] == ["completed"] * 3
    finally:
        assert gw.stop() == 0
    assert gw.output().count("is not writable") == 1


def test_log_json_to_dev_stderr_is_one_object_per_line(tmp_path: Path, upstream) -> None:
    gw = new_gateway(tmp_path, upstream, "--log-json", "/dev/stderr", "--aibridge-structured-logging").start()
    try:
        assert messages(gw, gw.user_key, {"model": "m", "max_tokens": 5,  # type: ignore[attr-defined]
                                          "messages": [{"role": "user", "content": "x"}]}).status_code == 200
        ended(gw, "alice", 1)
    finally:
        assert gw.stop() == 0
    records = [json.loads(line) for line in gw.output().splitlines()]  # stdout and stderr together
    assert {"ts", "level", "logger", "msg"} <= records[0].keys()
    assert {r["record_type"] for r in records if r["msg"] == "interception log"} == {
        "interception_start", "token_usage", "prompt_usage", "interception_end"}
    assert any(r["msg"].startswith("shutting down") for r in records)


# --------------------------------------------------------------------------- aigw web


def test_web_ui_redacts_keys_annotates_flows_and_keeps_a_bound(tmp_path: Path, upstream) -> None:
    web_port = free_port()
    password = "web-ui-password-123"
    gw = new_gateway(tmp_path, upstream, "--set", f"web_port={web_port}", "--set", f"web_password={password}",
                     "--set", "web_open_browser=false", "--set", "aigw_web_max_flows=4", command="web").start()
    key = gw.user_key  # type: ignore[attr-defined]
    ui = f"http://127.0.0.1:{web_port}"
    auth = {"authorization": f"Bearer {password}"}
    try:
        for _ in range(5):
            assert messages(gw, key, {"model": "claude-haiku-4-5", "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "x"}]}).status_code == 200
        upstream.queue(Reply(status=500, chunks=[b'{"type":"error","error":{"type":"api_error","message":"x"}}']))
        assert messages(gw, key, {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}).status_code == 500
        # (No gateway API calls from here on: they would be flows too, and push these out of the bound.)

        assert httpx.get(f"{ui}/flows.json", trust_env=False).status_code == 403  # the UI needs the password
        flows = wait_until(lambda: [f for f in httpx.get(f"{ui}/flows.json", headers=auth, trust_env=False).json()
                                    if "failed" in f["comment"]], what="the failed flow's comment")
        all_flows = httpx.get(f"{ui}/flows.json", headers=auth, trust_env=False).json()
        assert len(all_flows) <= 4  # the bound
        text = json.dumps(all_flows)
        for secret in (ANTHROPIC_PROVIDER_KEY, key, password):
            assert secret not in text
        failed = flows[0]
        assert failed["marked"] and failed["comment"].startswith("alice · anthropic · claude-haiku-4-5 · failed")
        ok = next(f for f in all_flows if "completed" in f["comment"])
        assert ok["comment"] == "alice · anthropic · claude-haiku-4-5 · completed · in 25 out 12 cache r100 w7"
        assert dict(ok["request"]["headers"])["x-api-key"] == "[REDACTED]"
        for part in ("request/content.data", "response/content.data", "request/content/auto.json"):
            body = httpx.get(f"{ui}/flows/{ok['id']}/{part}", headers=auth, trust_env=False)
            assert body.status_code == 200 and ANTHROPIC_PROVIDER_KEY not in body.text
        dump = httpx.get(f"{ui}/flows/dump", headers=auth, trust_env=False)
        assert dump.status_code == 200 and len(dump.content) > 100
        assert ANTHROPIC_PROVIDER_KEY.encode() not in dump.content and key.encode() not in dump.content
    finally:
        assert gw.stop() == 0


def test_operations_section_is_documented() -> None:
    docs = (REPO / "README.md").read_text() if (REPO / "README.md").exists() else ""
    docs += (REPO / "docs" / "OPERATIONS.md").read_text() if (REPO / "docs" / "OPERATIONS.md").exists() else ""
    for needle in ("DUMP_DIR", "aigw_web_max_flows", "web_password", "aigw_shutdown_grace", "0.25",
                   "coder_aibridged_interceptions_total", "--aibridge-retention"):
        assert needle in docs, needle

