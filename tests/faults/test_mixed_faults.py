"""200 concurrent streams against an upstream that misbehaves in every way at once (hangs before and
during the response, 503/529 bursts, cut streams, slow pings), plus refused and black-holed connects
and clients that leave mid-stream, with the circuit breaker on: every request ends in exactly one
ended interception row, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.faulty import Blackhole
from tests.fakes.upstream import FakeUpstream, Gate, Reply, anthropic_events, json_reply
from tests.gateway_process import Gateway, clean_env, provider_env, settled_count

pytestmark = pytest.mark.e2e

STREAMS = 200
REFUSED = BLACKHOLED = 10
PROMPT = {"max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "faults"}]}


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, blackhole: Blackhole, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = clean_env(**provider_env(upstream.url),
                    CODER_AIBRIDGE_PROVIDER_5_TYPE="anthropic", CODER_AIBRIDGE_PROVIDER_5_NAME="blackhole",
                    CODER_AIBRIDGE_PROVIDER_5_KEY="sk-ant-blackhole-0000000000",
                    CODER_AIBRIDGE_PROVIDER_5_BASE_URL=blackhole.url,
                    CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT="1s", CODER_AIBRIDGE_UPSTREAM_IDLE_TIMEOUT="1s",
                    CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED="true", CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD="3",
                    CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT="2s")
    gateway = Gateway(tmp_path_factory.mktemp("mixed"), env)
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def replies(gates: list[Gate]) -> list[Reply]:
    events = anthropic_events({"model": "m", **PROMPT})
    sse = {"content-type": "text/event-stream"}

    def gate(timeout: float = 30) -> Gate:
        made = Gate(timeout=timeout)
        gates.append(made)
        return made

    def slow() -> list[bytes | Gate]:
        out: list[bytes | Gate] = []
        for event in events:
            out += [event, Gate(timeout=0.3)]  # never opened: pauses shorter than the idle limit
        return out

    kinds = [
        lambda: Reply(headers=sse, chunks=list(events)),
        lambda: Reply(headers=sse, chunks=[*events[:3], gate(), *events[3:]]),  # silent mid-stream
        lambda: Reply(head_gate=gate()),  # silent before the headers
        lambda: json_reply({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, 503),
        lambda: Reply(headers=sse, chunks=events[:4], truncate=True),  # cut
        lambda: json_reply({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, 529),
        lambda: Reply(headers=sse, chunks=slow()),
        lambda: Reply(headers=sse, chunks=list(events)),
    ]
    return [kinds[i % len(kinds)]() for i in range(STREAMS)]


async def one(client: httpx.AsyncClient, gw: Gateway, instance: str, i: int, model: str | None = None) -> str:
    """One streamed request; what the client saw."""
    url = f"{gw.url}/api/v2/aibridge/{instance}/v1/messages"
    body = {**PROMPT, "model": model or f"claude-{i % 20}"}
    try:
        async with client.stream("POST", url, json=body, headers={"x-api-key": gw.user_key}) as response:  # type: ignore[attr-defined]
            async for _ in response.aiter_raw():
                if i % 10 == 9:
                    return "left"  # the client goes away mid-stream
            return str(response.status_code)
    except httpx.HTTPError as e:
        return type(e).__name__


def test_every_request_ends_in_exactly_one_row(gw: Gateway, upstream: FakeUpstream, blackhole: Blackhole) -> None:
    gates: list[Gate] = []
    for reply in replies(gates):
        upstream.queue(reply)
    before = settled_count(gw)

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=STREAMS + REFUSED + BLACKHOLED)
        async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:
            jobs = [one(client, gw, "anthropic", i) for i in range(STREAMS)]
            jobs += [one(client, gw, "blackhole", i) for i in range(BLACKHOLED)]

            async def refused_in_a_row() -> list[str]:  # one model, one after the other: trips its breaker
                return [await one(client, gw, "dead", i, "claude-refused") for i in range(REFUSED)]

            *outcomes, refused = await asyncio.gather(*jobs, refused_in_a_row())
            return [*outcomes, *refused]

    try:
        seen = asyncio.run(run())
    finally:
        for gate in gates:
            gate.open()
    total = STREAMS + REFUSED + BLACKHOLED
    assert len(seen) == total
    rows = gw.wait_for("select id, status, ended_at, metadata from aibridge_interceptions order by started_at",
                       lambda r: len(r) >= before + total and all(row["ended_at"] for row in r))
    mine = rows[before:]
    assert len(mine) == total, Counter(row["status"] for row in mine)
    assert len({row["id"] for row in mine}) == total
    assert all(row["ended_at"] for row in mine)
    statuses = Counter(row["status"] for row in mine)
    assert set(statuses) <= {"completed", "failed", "cancelled"}
    errors = Counter(json.loads(row["metadata"]).get("error", "") for row in mine)
    assert statuses["completed"] > 0 and statuses["cancelled"] > 0
    assert errors["upstream timeout after 1s"] > 0
    assert any(e.startswith("upstream answered HTTP 503") for e in errors)
    assert any("circuit breaker" in e for e in errors)
    # Still serving.
    upstream.reset()
    ok = httpx.post(f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", trust_env=False, timeout=30,
                    headers={"x-api-key": gw.user_key},  # type: ignore[attr-defined]
                    json={**PROMPT, "stream": False, "model": "claude-after"})
    assert ok.status_code == 200, ok.text
