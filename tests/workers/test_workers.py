"""`aigw serve --workers 2` end to end: one listener, two processes, one database.

Every request is sent on a new connection, so the kernel's SO_REUSEPORT hash spreads them over both
workers; which worker served an interception is in its metadata (`worker`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import FakeUpstream, Gate, Reply, anthropic_events
from tests.gateway_process import Gateway, clean_env, free_port, provider_env, wait_until

pytestmark = pytest.mark.e2e

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
STREAM_BODY = {**BODY, "stream": True}
MESSAGES = "/api/v2/aibridge/anthropic/v1/messages"



def send(gw: Gateway, key: str, body: dict[str, Any] = BODY) -> httpx.Response:
    # httpx.post: a new connection per request
    return httpx.post(gw.url + MESSAGES, json=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                      trust_env=False, timeout=30)


def rows_of(gw: Gateway, user: str, where: str = "true") -> list[dict[str, Any]]:
    return gw.query("select i.id::varchar as id, i.status, i.ended_at, i.metadata from aibridge_interceptions i "
                    f"join users u on u.id = i.initiator_id where u.name = '{user}' and {where} order by started_at")


def workers_of(rows: list[dict[str, Any]]) -> set[int]:
    return {json.loads(r["metadata"]).get("worker") for r in rows}


def worker_pid(gw: Gateway, worker: int, after: int = 0) -> int:
    """The pid of the latest start of `worker` (the primary logs each), once there are more than `after`."""
    starts = wait_until(lambda: (found := re.findall(rf"started worker {worker} \(pid (\d+)\)", gw.output()))
                        and len(found) > after and found, what=f"worker {worker} to start")
    return int(starts[-1])


def serve_until_both(gw: Gateway, key: str, user: str) -> int:
    """Send requests until each worker has recorded one for `user`; returns how many were sent."""
    sent = 0

    def both() -> bool:
        nonlocal sent
        assert send(gw, key).status_code == 200
        sent += 1
        return workers_of(rows_of(gw, user)) >= {0, 1}

    wait_until(both, timeout=60, what="requests on both workers")
    return sent


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[Gateway]:
    env = clean_env(**provider_env(upstream.url), CODER_PROMETHEUS_ENABLE="true",
                    CODER_PROMETHEUS_ADDRESS=f"127.0.0.1:{metrics_port}")
    gateway = Gateway(tmp_path_factory.mktemp("workers"), env, ["--workers", "2"])
    gateway.start()
    worker_pid(gateway, 1)
    yield gateway
    gateway.stop()


def create_key(gw: Gateway, user: str) -> str:
    out = gw.cli("keys", "create", "--user", user, "--json")  # the admin API, on whichever worker it lands
    # Keys reach every worker within a second (as revocations do); until then another worker may not know it.
    time.sleep(1.0)
    return json.loads(out.stdout)["key"]


def test_requests_spread_over_both_workers_each_recorded_once(gw: Gateway) -> None:
    key = create_key(gw, "spread")
    sent = serve_until_both(gw, key, "spread")
    with ThreadPoolExecutor(8) as pool:  # concurrent clients, each request on its own connection
        codes = list(pool.map(lambda _: send(gw, key).status_code, range(80)))
    assert codes == [200] * 80
    sent += 80
    rows = wait_until(lambda: (r := rows_of(gw, "spread", "ended_at is not null")) and len(r) >= sent and r,
                      what="every request recorded")
    time.sleep(0.5)  # a duplicate would come with the next batch
    rows = rows_of(gw, "spread")
    assert len(rows) == sent
    assert len({r["id"] for r in rows}) == sent
    assert {r["status"] for r in rows} == {"completed"}
    assert workers_of(rows) == {0, 1}


def test_revoked_key_refused_by_every_worker_within_a_second(gw: Gateway) -> None:
    key = create_key(gw, "revoked")
    serve_until_both(gw, key, "revoked")
    gw.cli("keys", "revoke", key)
    time.sleep(1.0)  # the timeout under test: every worker knows within one second
    codes = [send(gw, key).status_code for _ in range(24)]  # 24 connections: both workers, but for 2^-23
    assert codes == [401] * 24


def test_budget_spent_through_one_worker_holds_on_both(gw: Gateway) -> None:
    key = create_key(gw, "budgeted")
    gw.cli("users", "set", "budgeted", "--budget", "0.000000001")
    assert send(gw, key).status_code == 200  # admitted: nothing spent yet; it spends more than the budget

    def all_refused() -> bool:
        return [send(gw, key).status_code for _ in range(12)] == [403] * 12

    # Spend reaches the other worker through the primary within a second or so; without it, never.
    wait_until(all_refused, timeout=5, what="both workers refusing the spent budget")
    refused = wait_until(lambda: (r := rows_of(gw, "budgeted", "(i.metadata->>'limit') = 'budget'")) and len(r) >= 12
                         and r)
    assert workers_of(refused) == {0, 1}


def test_admin_api_answered_through_either_worker(gw: Gateway) -> None:
    token = gw.admin_token()
    answers = set()
    for _ in range(16):
        r = httpx.get(gw.url + "/api/v2/aibridge/keys", headers={"authorization": f"Bearer {token}"},
                      trust_env=False, timeout=30)
        assert r.status_code == 200, r.text
        answers.add(tuple(sorted(k["id"] for k in r.json())))
    assert len(answers) == 1  # one database behind both
    r = httpx.get(gw.url + "/api/v2/aibridge/keys", headers={"authorization": "Bearer aigw_wrong"},
                  trust_env=False, timeout=30)
    assert r.status_code == 401


def interceptions_total(metrics_port: int, user_id: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "coder_aibridged_interceptions":
            total += sum(s.value for s in family.samples
                         if s.name.endswith("_total") and s.labels.get("initiator_id") == user_id)
    return total


def test_metrics_are_the_sum_of_both_workers(gw: Gateway, metrics_port: int) -> None:
    key = create_key(gw, "counted")
    n = serve_until_both(gw, key, "counted") + 10
    for _ in range(10):
        assert send(gw, key).status_code == 200
    rows = wait_until(lambda: (r := rows_of(gw, "counted", "ended_at is not null")) and len(r) >= n and r)
    user_id = gw.query("select id::varchar as id from users where name = 'counted'")[0]["id"]
    assert len(rows) == n
    assert workers_of(rows) == {0, 1}
    # Workers report every second: the sum catches up with the database.
    wait_until(lambda: interceptions_total(metrics_port, user_id) == n, timeout=10, what=f"{n} in /metrics")


def held_streams(gw: Gateway, upstream: FakeUpstream, key: str, user: str, gate: Gate,
                 on: set[int]) -> list[httpx.Response]:
    """Streams held open by the upstream, until `on` workers each hold at least one."""
    events = anthropic_events(STREAM_BODY)
    clients, responses = [], []
    for _ in range(30):
        upstream.queue(Reply(headers={"content-type": "text/event-stream"}, chunks=[events[0], gate, *events[1:]]))
        client = httpx.Client(trust_env=False, timeout=60)
        clients.append(client)
        request = client.build_request("POST", gw.url + MESSAGES, json=STREAM_BODY, headers={"x-api-key": key})
        responses.append(client.send(request, stream=True))
        open_rows = wait_until(lambda: (r := rows_of(gw, user, "ended_at is null")) and len(r) == len(responses)
                               and r, what="the stream's start recorded")
        if workers_of(open_rows) >= on:
            return responses
    raise AssertionError("streams did not reach every worker")


def test_killed_worker_is_restarted_and_its_interceptions_ended(gw: Gateway, upstream: FakeUpstream) -> None:
    key = create_key(gw, "crash")
    pid = worker_pid(gw, 1)
    gate = Gate(timeout=30)
    responses = held_streams(gw, upstream, key, "crash", gate, {0, 1})
    open_rows = rows_of(gw, "crash", "ended_at is null")
    on_worker_1 = {r["id"] for r in open_rows if json.loads(r["metadata"])["worker"] == 1}
    os.kill(pid, signal.SIGKILL)
    ended = wait_until(lambda: (r := rows_of(gw, "crash", "ended_at is not null")) and len(r) >= len(on_worker_1)
                       and r, what="the killed worker's interceptions ended")
    assert {r["id"] for r in ended} == on_worker_1
    for row in ended:
        assert row["status"] == "failed"
        assert json.loads(row["metadata"])["error"] == "worker 1 stopped before the interception ended"
    gate.open()  # worker 0's streams finish normally
    for response in responses:
        try:
            response.read()
        except httpx.HTTPError:
            pass  # the killed worker's connections
        response.close()
    rows = wait_until(lambda: (r := rows_of(gw, "crash")) and all(x["ended_at"] for x in r) and r)
    assert {r["status"] for r in rows if r["id"] not in on_worker_1} == {"completed"}
    new_pid = worker_pid(gw, 1, after=1)
    assert new_pid != pid
    before = len(rows_of(gw, "crash"))
    wait_until(lambda: send(gw, key) and 1 in workers_of(rows_of(gw, "crash")[before:]), timeout=60,
               what="the new worker 1 serving")


def draining(responses: list[httpx.Response], gw: Gateway) -> dict[int, int]:
    """In-flight streams per worker, from their open rows."""
    counts: dict[int, int] = {}
    for row in rows_of(gw, "drained", "ended_at is null"):
        worker = json.loads(row["metadata"])["worker"]
        counts[worker] = counts.get(worker, 0) + 1
    assert sum(counts.values()) == len(responses)
    return counts


def test_sigterm_drains_both_workers(gw: Gateway, upstream: FakeUpstream) -> None:
    """Last in this module: stops the gateway."""
    key = create_key(gw, "drained")
    worker = worker_pid(gw, 1)
    gate = Gate(timeout=30)
    responses = held_streams(gw, upstream, key, "drained", gate, {0, 1})
    streams = draining(responses, gw)
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    # One log stream; each line names its worker.
    wait_until(lambda: all(f"shutting down: no new connections; waiting up to 30s for {n} in-flight request(s) "
                           f"worker={w}" in gw.output() for w, n in streams.items()),
               what="both workers draining")
    gate.open()
    bodies = [r.read() for r in responses]
    assert all(b"message_stop" in b for b in bodies)
    assert gw.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    db: Path = gw.db
    conn = duckdb.connect(str(db), read_only=True)
    try:
        rows = conn.execute("select i.status, i.metadata->>'worker' from aibridge_interceptions i "
                            "join users u on u.id = i.initiator_id where u.name = 'drained'").fetchall()
    finally:
        conn.close()
    assert len(rows) == len(responses)
    assert {status for status, _ in rows} == {"completed"}
    assert {worker for _, worker in rows} == {"0", "1"}


def test_web_refuses_several_workers(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = Gateway(tmp_path, clean_env(**provider_env(upstream.url)), ["--workers", "2"], command="web")
    result = gw.cli("web", "--workers", "2", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "aigw: aigw web runs one process (its UI shows the flows of the process it runs in); "
        "use aigw serve --workers for several"]


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaps counts: it no longer runs)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def test_workers_stop_when_the_primary_dies(tmp_path: Path, upstream: FakeUpstream) -> None:
    gateway = Gateway(tmp_path, clean_env(**provider_env(upstream.url)), ["--workers", "2"])
    gateway.start()
    try:
        worker = worker_pid(gateway, 1)
        wait_until(lambda: "aigw worker 1 listening" in gateway.output(), what="worker 1 serving")
        assert gateway.proc is not None
        gateway.proc.kill()  # SIGKILL: no chance to stop its workers
        wait_until(lambda: gone(worker), timeout=30, what="the orphaned worker to stop")
        assert "worker 1 lost the primary process: shutting down" in gateway.output()
    finally:
        gateway.stop()
