"""Two gateway replicas on one DuckLake (PostgreSQL catalog, S3 data through moto): concurrent writes
with exact counts, thread links across replicas, keys and revocations seen by both, a replica killed
mid-stream, the CLI and an analyst's DuckDB on the lake, and `aigw migrate`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from tests.fakes.upstream import FakeUpstream, Gate, Reply, anthropic_events
from tests.gateway_process import Gateway, aigw, clean_env, provider_env
from tests.lake.conftest import S3, Postgres

REQUESTS = 1000  # per replica
CONCURRENCY = 8


def lake_env(catalog: str, data_path: str, s3: S3 | None, upstream: FakeUpstream) -> dict[str, str]:
    env = clean_env(**provider_env(upstream.url), CODER_AIBRIDGE_DB=catalog, CODER_AIBRIDGE_DATA_PATH=data_path)
    if s3 is not None:
        env.update(s3.env)
    return env


def replica(workdir: Path, env: dict[str, str], extra_args: tuple[str, ...] = ()) -> Gateway:
    gw = Gateway(workdir, env, extra_args)
    gw.env["CODER_AIBRIDGE_DB"] = env["CODER_AIBRIDGE_DB"]  # Gateway points it at a file by default
    return gw


def sql(gw: Gateway, text: str) -> list[dict[str, Any]]:
    """`aigw query` on the lake: the CLI attaches it itself."""
    out = gw.cli("query", "--format", "json", text)
    return json.loads(out.stdout)


def wait_rows(gw: Gateway, text: str, done: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = gw.query(text)
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def message(gw: Gateway, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", json=body, timeout=30, trust_env=False,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01", **headers})


HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def status_on(gw: Gateway, key: str, want: int) -> int:
    """The status a request with `key` gets from `gw` once it is `want`, or after two seconds (a key
    created or revoked through any replica holds on all within two seconds)."""
    deadline = time.monotonic() + 2
    while True:
        code = message(gw, key, HELLO).status_code
        if code == want or time.monotonic() > deadline:
            return code
        time.sleep(0.1)


def load(gateways: Sequence[Gateway], key: str, per_thread: int, threads_per_gateway: int) -> list[str]:
    """`per_thread` messages from each of `threads_per_gateway` threads on every gateway at once; the failures."""
    failures: list[str] = []

    def send(gw: Gateway) -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            for _ in range(per_thread):
                r = client.post(f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", json=HELLO,
                                headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
                if r.status_code != 200:
                    failures.append(f"{gw.port}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=send, args=(gw,)) for gw in gateways for _ in range(threads_per_gateway)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


@pytest.fixture(scope="module")
def replicas(postgres: Postgres, s3: S3, upstream: FakeUpstream,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    env = lake_env(postgres.create_db(), f"s3://{s3.bucket()}/aigw/", s3, upstream)
    # Short timers, so that the tests see a dead replica's heartbeat expire and the upkeep run.
    timers = ("--set", "aigw_lake_replica_timeout=3s", "--set", "aigw_lake_maintenance_interval=5s")
    a = replica(tmp_path_factory.mktemp("replica-a"), env, timers)
    b = replica(tmp_path_factory.mktemp("replica-b"), env, timers)
    a.admin_key = a.create_key("root", admin=True)  # type: ignore[attr-defined]
    a.user_key = a.create_key("alice")  # type: ignore[attr-defined]
    a.start()
    b.start()
    yield a, b
    for gw in (a, b):
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop()


def test_concurrent_writes_exact_counts(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    key = a.user_key  # type: ignore[attr-defined]
    before = a.query("select count(*) as n from aibridge_interceptions")[0]["n"]
    assert load((a, b), key, REQUESTS // (CONCURRENCY // 2), CONCURRENCY // 2) == []
    expected = before + 2 * REQUESTS
    counts = "select count(*) as n, count(ended_at) as ended, count(distinct id) as ids from aibridge_interceptions"
    rows = wait_rows(a, counts, lambda r: r[0]["ended"] == expected)
    assert rows == [{"n": expected, "ended": expected, "ids": expected}]
    # The other replica and the CLI read the same rows; one token row and one prompt per interception.
    assert b.query(counts) == rows
    per = sql(a, "select (select count(*) from aibridge_token_usages) as tokens, "
                 "(select count(*) from aibridge_user_prompts) as prompts, "
                 "(select count(distinct json_extract_string(metadata, '$.replica')) "
                 " from aibridge_interceptions) as replicas")
    assert per == [{"tokens": expected, "prompts": expected, "replicas": 2}]


def test_thread_links_across_replicas(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    key = a.user_key  # type: ignore[attr-defined]
    tools = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}]
    first = message(a, key, {**HELLO, "tools": tools})
    assert first.status_code == 200
    call = next(c for c in first.json()["content"] if c["type"] == "tool_use")
    wait_rows(a, f"select 1 from aibridge_tool_usages where provider_tool_call_id = '{call['id']}'", bool)
    follow = {**HELLO, "tools": tools, "messages": [
        {"role": "user", "content": "weather?"}, {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]}]}
    second = message(b, key, follow)  # the other replica
    assert second.status_code == 200
    rows = wait_rows(b, "select i.thread_parent_id::VARCHAR as parent, i.thread_root_id::VARCHAR as root, "
                        "t.interception_id::VARCHAR as owner from aibridge_interceptions i "
                        "join aibridge_tool_usages t on t.provider_tool_call_id = "
                        f"json_extract_string(i.metadata, '$.correlating_tool_call_id') "
                        f"where t.provider_tool_call_id = '{call['id']}'", bool)
    assert len(rows) == 1
    assert rows[0]["parent"] == rows[0]["owner"] and rows[0]["root"] == rows[0]["owner"]


def test_keys_and_revocation_reach_every_replica(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    admin = a.admin_key  # type: ignore[attr-defined]
    created = httpx.post(f"{b.url}/api/v2/aibridge/keys", json={"user": "bob"}, timeout=30, trust_env=False,
                         headers={"authorization": f"Bearer {admin}"})
    assert created.status_code in (200, 201), created.text
    key, key_id = created.json()["key"], created.json()["id"]

    assert status_on(a, key, 200) == 200  # created on b, used on a
    a.cli("keys", "revoke", key_id)  # the CLI on the lake, no gateway involved
    assert status_on(a, key, 401) == 401
    assert status_on(b, key, 401) == 401


def test_replica_killed_mid_stream_is_ended_by_the_survivor(replicas: tuple[Gateway, Gateway],
                                                             upstream: FakeUpstream) -> None:
    a, b = replicas
    key = a.user_key  # type: ignore[attr-defined]
    since = datetime.now(UTC).isoformat()  # earlier tests' rows may still be committing: not this one's
    gate = Gate(timeout=20)
    events = anthropic_events({**HELLO, "stream": True})
    upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[*events[:3], gate, *events[3:]]))
    got_first = threading.Event()

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{b.url}/api/v2/aibridge/anthropic/v1/messages",
                              json={**HELLO, "stream": True}, timeout=30, trust_env=False,
                              headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as r:
                for _ in r.iter_bytes():
                    got_first.set()
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=stream)
    t.start()
    assert got_first.wait(20)
    open_row = wait_rows(a, "select id::VARCHAR as id from aibridge_interceptions "
                            f"where ended_at is null and started_at >= '{since}'::TIMESTAMPTZ", bool)
    assert len(open_row) == 1
    assert b.proc is not None
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    gate.open()
    t.join(30)
    # Replica a keeps serving, and ends b's open interception once b's heartbeat (3 s here) expired.
    assert message(a, key, HELLO).status_code == 200
    rows = wait_rows(a, f"select status, json_extract_string(metadata, '$.error') as error "
                        f"from aibridge_interceptions where id = '{open_row[0]['id']}'",
                     lambda r: r and r[0]["status"] is not None)
    assert rows == [{"status": "failed", "error": "gateway stopped before the interception ended"}], a.output()[-3000:]
    assert "stopped sending heartbeats: ended 1 interception(s)" in a.output()
    b.log.close()
    b.start()  # back under the same name: nothing of its own left open, it serves again
    assert message(b, key, HELLO).status_code == 200


def test_postgres_down_replicas_serve_and_spool(replicas: tuple[Gateway, Gateway], postgres: Postgres) -> None:
    """The catalog goes away: requests are still served, records wait in each replica's spool, /readyz
    says why; once PostgreSQL is back every record is in the lake exactly once."""
    a, b = replicas
    key = a.user_key  # type: ignore[attr-defined]
    since = datetime.now(UTC).isoformat()  # the rows of this test: started from now on
    counts = ("select count(*) as n, count(ended_at) as ended, count(distinct id) as ids from aibridge_interceptions "
              f"where started_at >= '{since}'::TIMESTAMPTZ")
    postgres.stop()
    try:
        assert [message(gw, key, HELLO).status_code for gw in (a, b) for _ in range(5)] == [200] * 10

        def not_ready(gw: Gateway) -> bool:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = httpx.get(gw.url + "/readyz", timeout=5, trust_env=False)
                if r.status_code == 503:
                    return "spooled" in r.text
                time.sleep(0.2)
            return False

        assert not_ready(a) and not_ready(b)
    finally:
        postgres.start()
    rows = wait_rows(a, counts, lambda r: r[0]["ended"] == 10, timeout=60)
    assert rows == [{"n": 10, "ended": 10, "ids": 10}]
    for gw in (a, b):
        assert wait_rows(gw, "select 1 as ok", bool)  # the admin query works again
        deadline = time.monotonic() + 30
        while httpx.get(gw.url + "/readyz", timeout=5, trust_env=False).status_code != 200:
            assert time.monotonic() < deadline, "replica did not become ready again"
            time.sleep(0.2)


def test_upkeep_runs_on_one_replica_at_a_time(replicas: tuple[Gateway, Gateway]) -> None:
    """Both replicas try every 5 s; the lease holder rolls up and compacts, the other skips."""
    a, b = replicas
    marks = {gw: len(gw.output()) for gw in (a, b)}

    def since(gw: Gateway) -> str:  # this test's log lines only
        return gw.output()[marks[gw]:]

    deadline = time.monotonic() + 30
    while "lake maintenance done" not in since(a) + since(b):
        assert time.monotonic() < deadline, "no upkeep ran"
        time.sleep(0.5)
    time.sleep(6)  # another round
    ran = ["lake maintenance done" in since(gw) for gw in (a, b)]
    assert sorted(ran) == [False, True]  # the lease (63 s here) keeps it on one replica
    logs = since(a) + since(b)
    assert "lake maintenance failed" not in logs, logs[logs.find("lake maintenance failed"):][:3000]


def test_analyst_attaches_the_lake(replicas: tuple[Gateway, Gateway], postgres: Postgres, s3: S3) -> None:
    """The README's lines, in a plain DuckDB (extensions from the wheels, as an analyst's pip install has)."""
    a, _ = replicas
    catalog, data_path = a.env["CODER_AIBRIDGE_DB"], a.env["CODER_AIBRIDGE_DATA_PATH"]
    script = f"""
import duckdb, sys
from addons.store.lake import extension_file
con = duckdb.connect()
for name in ("ducklake", "postgres", "httpfs"):
    con.install_extension(str(extension_file(name)))
con.execute("CREATE SECRET (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
            "ENDPOINT '{s3.endpoint.removeprefix('http://')}', URL_STYLE 'path', USE_SSL false)")
con.execute("ATTACH '{catalog}' AS aibridge (DATA_PATH '{data_path}', READ_ONLY)")
n = con.execute("SELECT count(*) FROM aibridge.aibridge_interceptions").fetchone()[0]
s = con.execute("SELECT count(*) FROM aibridge.aibridge_sessions").fetchone()[0]
print(n, s)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    n, sessions = map(int, out.stdout.split())
    assert n == a.query("select count(*) as n from aibridge_interceptions")[0]["n"] and sessions >= 1
    # The CLI's readers on the lake.
    listed = json.loads(a.cli("interceptions", "list", "--json", "--limit", "5").stdout)
    assert len(listed["interceptions"] if isinstance(listed, dict) else listed) == 5
    a.cli("sessions", "list")
    report = a.workdir / "report.html"
    a.cli("report", "--out", str(report))
    assert "<html" in report.read_text().lower()


def test_migrate_embedded_database_into_a_lake(postgres: Postgres, upstream: FakeUpstream,
                                               tmp_path: Path) -> None:
    source = Gateway(tmp_path / "embedded", clean_env(**provider_env(upstream.url)))
    source.workdir.mkdir()
    key = source.create_key("carol")
    source.start()
    try:
        for _ in range(5):
            assert message(source, key, HELLO).status_code == 200
        source.wait_for("select count(*) as n from aibridge_interceptions where ended_at is not null",
                        lambda r: r[0]["n"] == 5)
    finally:
        source.stop()
    catalog = postgres.create_db()
    data = tmp_path / "lake-data"
    env = clean_env(CODER_AIBRIDGE_HOME=str(tmp_path / "embedded"))
    args = ["migrate", "--from", str(source.db), "--to", catalog, "--data-path", str(data)]
    first = aigw(args, env, tmp_path)
    assert "aibridge_interceptions: 5" in first.stdout
    again = aigw(args, env, tmp_path, check=False)  # a non-empty target is refused, nothing copied twice
    assert again.returncode != 0 and "not empty" in again.stderr
    con = duckdb.connect()
    from addons.store.lake import extension_file

    for name in ("ducklake", "postgres"):
        con.install_extension(str(extension_file(name)))
    con.execute(f"ATTACH '{catalog}' AS aibridge (DATA_PATH '{data}/', READ_ONLY)")
    src = duckdb.connect(str(source.db), read_only=True)
    for table in ("aibridge_interceptions", "aibridge_token_usages", "aibridge_user_prompts", "api_keys", "users"):
        lake_n = con.execute(f"SELECT count(*) FROM aibridge.{table}").fetchone()
        assert lake_n == src.execute(f"SELECT count(*) FROM {table}").fetchone(), table
    # The migrated key works on a replica of the lake.
    gw = replica(tmp_path / "after", lake_env(catalog, str(data), None, upstream))
    gw.workdir.mkdir()
    gw.start()
    try:
        assert message(gw, key, HELLO).status_code == 200
    finally:
        gw.stop()
