"""Compressed request bodies are decoded with a cap (`--aibridge-max-body-size`), never whole on the event
loop: a 40 KB gzip bomb of 40 MiB is 413 and not forwarded; an encoding aigw cannot decode is 415; gzip,
br and zstd bodies within the limit (Codex sends zstd on ChatGPT plans) are recorded and forwarded as sent."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import brotli
import httpx
import orjson
import pytest
from backports import zstd

from tests.fakes.upstream import FakeUpstream, Seen, default_reply
from tests.gateway_process import Gateway, latest_ended_after, settled_count

pytestmark = pytest.mark.e2e

MESSAGES = "/api/v2/aibridge/anthropic/v1/messages"
RESPONSES = "/api/v2/aibridge/openai/v1/responses"


def post(gateway: Gateway, path: str, content: bytes, encoding: str) -> httpx.Response:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    return httpx.post(gateway.url + path, content=content, trust_env=False, timeout=30, headers={
        "x-api-key": key, "content-type": "application/json", "content-encoding": encoding})


def test_a_gzip_bomb_is_413_and_not_forwarded(gateway: Gateway, upstream: FakeUpstream) -> None:
    text = "a" * (40 * 1024 * 1024)  # over the default 32 MiB limit once decoded
    body = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]})
    bomb = gzip.compress(body, 9)
    assert len(bomb) < 100 * 1024
    before = settled_count(gateway)
    response = post(gateway, MESSAGES, bomb, "gzip")
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "request_too_large" and "decoded request body exceeds" in error["message"]
    assert upstream.requests == []
    row = latest_ended_after(gateway, before)
    assert row["status"] == "failed"


@pytest.mark.parametrize(("encoding", "status", "says"), [
    ("compress", 415, "unsupported request Content-Encoding"),
    ("gzip, br", 415, "unsupported request Content-Encoding"),
    ("gzip", 400, "not valid gzip"),
])
def test_undecodable_bodies_are_refused(gateway: Gateway, upstream: FakeUpstream, encoding: str, status: int,
                                        says: str) -> None:
    response = post(gateway, MESSAGES, b'{"model":"m","max_tokens":5,"messages":[]}', encoding)
    assert response.status_code == status
    assert says in response.json()["error"]["message"]
    assert upstream.requests == []


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress,
}


@pytest.mark.parametrize("encoding", list(COMPRESSORS))
def test_encoded_bodies_within_the_limit_are_recorded_and_forwarded(gateway: Gateway, upstream: FakeUpstream,
                                                                    encoding: str) -> None:
    prompt = f"hello in {encoding}"
    body = orjson.dumps({"model": "gpt-5-codex", "input": prompt, "stream": False})
    sent = COMPRESSORS[encoding](body)
    # The fake decodes no request body: it answers as it would to the plain one.
    upstream.replies.append(default_reply(Seen("POST", "/v1/responses", {}, body)))
    before = settled_count(gateway)
    response = post(gateway, RESPONSES, sent, encoding)
    assert response.status_code == 200, response.text
    assert len(upstream.requests) == 1  # as the client sent it
    assert upstream.requests[0].body == sent and upstream.requests[0].headers["content-encoding"] == encoding
    row = latest_ended_after(gateway, before)
    prompts = gateway.query(f"select prompt from aibridge_user_prompts where interception_id = '{row['id']}'")
    assert [p["prompt"] for p in prompts] == [prompt]
