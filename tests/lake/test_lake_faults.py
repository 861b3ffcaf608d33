"""A lake under load and under faults: three replicas on one DuckLake with exact counts and keys seen
by all; the object store (S3) switched off and on again under the replicas while PostgreSQL stays up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes.tcp_switch import TcpSwitch
from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, wait_until
from tests.lake.conftest import S3, Postgres
from tests.lake.test_replicas import HELLO, lake_env, load, message, replica, status_on, wait_rows

REPLICAS = 3
REQUESTS = 600  # per replica
THREADS = 3  # per replica


@pytest.fixture(scope="module")
def store(s3: S3) -> Iterator[TcpSwitch]:
    """The replicas' way to the S3 store: a relay the tests switch off (moto keeps its buckets in memory,
    so the store itself must stay up)."""
    target = urlsplit(s3.endpoint)
    assert target.hostname is not None and target.port is not None
    switch = TcpSwitch(target.hostname, target.port)
    yield switch
    switch.close()


@pytest.fixture(scope="module")
def replicas(postgres: Postgres, s3: S3, store: TcpSwitch, upstream: FakeUpstream,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    env = lake_env(postgres.create_db(), f"s3://{s3.bucket()}/aigw/", s3, upstream)
    env["CODER_AIBRIDGE_S3_ENDPOINT"] = store.url
    timers = ("--set", "aigw_lake_maintenance_interval=5s")  # the upkeep runs during the tests
    gateways = [replica(tmp_path_factory.mktemp(f"replica-{i}"), env, timers) for i in range(REPLICAS)]
    first = gateways[0]
    first.admin_key = first.create_key("root", admin=True)  # type: ignore[attr-defined]
    first.user_key = first.create_key("alice")  # type: ignore[attr-defined]
    for gw in gateways:
        gw.start()
    yield gateways
    for gw in gateways:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop()


def counts_since(since: str) -> str:
    return ("select count(*) as n, count(ended_at) as ended, count(distinct id) as ids "
            f"from aibridge_interceptions where started_at >= '{since}'::TIMESTAMPTZ")


def per_interception(gw: Gateway, since: str) -> list[dict[str, object]]:
    """How many of the interceptions since then have exactly one token row and one prompt, and how many
    replicas recorded them."""
    return gw.query(
        "select count(*) as n, count(distinct json_extract_string(i.metadata, '$.replica')) as replicas "
        "from aibridge_interceptions i "
        "join (select interception_id, count(*) as c from aibridge_token_usages group by 1) t "
        "on t.interception_id = i.id "
        "join (select interception_id, count(*) as c from aibridge_user_prompts group by 1) p "
        "on p.interception_id = i.id "
        f"where i.started_at >= '{since}'::TIMESTAMPTZ and t.c = 1 and p.c = 1")


def readyz(gw: Gateway) -> httpx.Response:
    return httpx.get(gw.url + "/readyz", timeout=5, trust_env=False)


def test_three_replicas_exact_counts(replicas: list[Gateway]) -> None:
    first = replicas[0]
    key = first.user_key  # type: ignore[attr-defined]
    since = datetime.now(UTC).isoformat()
    assert load(replicas, key, REQUESTS // THREADS, THREADS) == []
    expected = REPLICAS * REQUESTS
    rows = wait_rows(first, counts_since(since), lambda r: r[0]["ended"] >= expected, timeout=60)
    assert rows == [{"n": expected, "ended": expected, "ids": expected}]
    for gw in replicas[1:]:
        assert gw.query(counts_since(since)) == rows  # every replica reads the same lake
    assert per_interception(first, since) == [{"n": expected, "replicas": REPLICAS}]


def test_keys_and_revocation_reach_all_three(replicas: list[Gateway]) -> None:
    first, *others = replicas
    admin = first.admin_key  # type: ignore[attr-defined]
    created = httpx.post(f"{first.url}/api/v2/aibridge/keys", json={"user": "dave"}, timeout=30, trust_env=False,
                         headers={"authorization": f"Bearer {admin}"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]

    assert [status_on(gw, key, 200) for gw in others] == [200, 200]  # created through the first, used on the others
    revoked = httpx.delete(f"{others[0].url}/api/v2/aibridge/keys/{key_id}", timeout=30, trust_env=False,
                           headers={"authorization": f"Bearer {admin}"})
    assert revoked.status_code == 200, revoked.text
    assert [status_on(gw, key, 401) for gw in (first, others[1])] == [401, 401]  # revoked through the second


def test_object_store_down(replicas: list[Gateway], store: TcpSwitch) -> None:
    """S3 unreachable, PostgreSQL up: every request is still answered; small batches are inlined in the
    catalog and committed, a batch that must write Parquet is spooled (/readyz says so) and the upkeep
    fails, logged; once the store is back, the spool is replayed (every record once) and the upkeep runs."""
    first = replicas[0]
    key = first.user_key  # type: ignore[attr-defined]
    since = datetime.now(UTC).isoformat()
    marks = [len(gw.output()) for gw in replicas]

    def logs(marks: list[int]) -> str:
        return "".join(gw.output()[mark:] for gw, mark in zip(replicas, marks, strict=True))

    codes: list[int] = []
    store.off()
    try:
        # One request at a time: each batch is a row or two per table, inlined in the catalog.
        codes += [message(gw, key, HELLO).status_code for gw in replicas for _ in range(3)]
        assert wait_rows(first, counts_since(since), lambda r: r[0]["ended"] == 9) == [{"n": 9, "ended": 9, "ids": 9}]
        assert [readyz(gw).status_code for gw in replicas] == [200] * REPLICAS
        # Bursts: a batch over the inlining limit (10 rows) must write a Parquet file, and cannot.
        for _ in range(5):
            burst = [threading.Thread(target=lambda: codes.append(message(first, key, HELLO).status_code))
                     for _ in range(30)]
            for t in burst:
                t.start()
            for t in burst:
                t.join()
            if readyz(first).status_code == 503:
                break
        assert codes == [200] * len(codes)  # every request answered
        reason = readyz(first)
        assert reason.status_code == 503, "no batch had to write to the store"
        assert "recording to the database is failing; records are spooled" in reason.json()["reason"]
        assert "spooling records to" in logs(marks) and "HTTP PUT" in logs(marks)
        wait_until(lambda: "lake maintenance failed" in logs(marks), 30, "the upkeep failing")
        assert all(gw.proc is not None and gw.proc.poll() is None for gw in replicas)
        assert store.refused > 0
    finally:
        store.on()
    back = [len(gw.output()) for gw in replicas]
    rows = wait_rows(first, counts_since(since), lambda r: r[0]["ended"] >= len(codes), timeout=60)
    assert rows == [{"n": len(codes), "ended": len(codes), "ids": len(codes)}]
    assert per_interception(first, since) == [{"n": len(codes), "replicas": REPLICAS}]
    assert "spool replayed: every spooled record is in the database" in logs(marks)
    wait_until(lambda: "lake maintenance done" in logs(back), 30, "the upkeep running again")
    wait_until(lambda: all(readyz(gw).status_code == 200 for gw in replicas), 30, "every replica ready")
