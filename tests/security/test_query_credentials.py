"""Finding 7 (request side): credentials in the query string are not accepted (as in Coder), are
removed before the request goes upstream, and never reach the logs, the dumps or the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, clean_env, provider_env, settled_count
from tests.security.tripwire import basic, exchange

pytestmark = pytest.mark.e2e

OTHER_SECRET = "QS-OTHER-SECRET-0123456789abcdef"


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp("querycreds")
    env = clean_env(**provider_env(upstream.url), CODER_AIBRIDGE_PROVIDER_0_DUMP_DIR=str(workdir / "dumps"),
                    CODER_AIBRIDGE_PROVIDER_1_DUMP_DIR=str(workdir / "dumps"),
                    CODER_LOGGING_JSON=str(workdir / "aigw.log.json"),
                    CODER_LOGGING_HUMAN=str(workdir / "aigw.log"), CODER_AIBRIDGE_STRUCTURED_LOGGING="true")
    gateway = Gateway(workdir, env)
    gateway.user_key = gateway.create_key("alice")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_gateway_key_in_the_query_is_not_accepted(gw: Gateway, upstream: FakeUpstream) -> None:
    key: str = gw.user_key  # type: ignore[attr-defined]
    for query in (f"key={key}", f"api_key={key}", f"x-api-key={key}"):
        response = httpx.get(f"{gw.url}/api/v2/aibridge/anthropic/v1/models?{query}", trust_env=False)
        assert response.status_code == 401
        assert key not in response.text
    assert upstream.requests == []


def test_query_credentials_are_removed_before_upstream(gw: Gateway, upstream: FakeUpstream) -> None:
    key: str = gw.user_key  # type: ignore[attr-defined]
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{gw.url}/api/v2/aibridge/anthropic/v1/messages",
                          params={"beta": "true", "key": key, "API_KEY": OTHER_SECRET}, json=body,
                          headers={"x-api-key": key}, trust_env=False)
    assert response.status_code == 200
    response = httpx.get(f"{gw.url}/api/v2/aibridge/openai/v1/models?limit=2&%6Bey={key}&token={OTHER_SECRET}",
                         headers={"authorization": f"Bearer {key}"}, trust_env=False)
    assert response.status_code == 200
    # Plain-HTTP proxy request to an AI host.
    proxied = exchange(gw.port, f"GET http://api.anthropic.com/v1/models?key={key}&after_id=x HTTP/1.1\r\n"
                       f"Host: api.anthropic.com\r\nProxy-Authorization: {basic(key)}\r\n\r\n".encode())
    assert proxied.status == 200
    assert [r.path for r in upstream.requests] == ["/v1/messages?beta=true", "/v1/models?limit=2",
                                                   "/v1/models?after_id=x"]
    for seen in upstream.requests:
        assert key not in json.dumps(seen.headers) and OTHER_SECRET not in seen.path


def test_query_credentials_are_never_written(gw: Gateway, upstream: FakeUpstream) -> None:
    key: str = gw.user_key  # type: ignore[attr-defined]
    before = settled_count(gw)
    # Routes that fail too (unknown route, dead upstream, traversal), with the secrets in the query.
    for path in ("/api/v2/aibridge/anthropic/v1/messages", "/api/v2/aibridge/anthropic/v2/nowhere",
                 "/api/v2/aibridge/dead/v1/messages", "/api/v2/aibridge/anthropic/v1/models/../messages"):
        exchange(gw.port, f"POST {path}?key={key}&api_key={OTHER_SECRET} HTTP/1.1\r\nHost: x\r\n"
                 f"x-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}".encode(),
                 "POST")
    gw.wait_for("select count(*) as n from aibridge_interceptions where ended_at is not null",
                lambda r: r[0]["n"] >= before + 2)
    written = [gw.output(), *(p.read_text(errors="replace") for p in gw.workdir.rglob("*") if p.is_file()
                              and (p.suffix in (".log", ".json", ".txt") or "dumps" in p.parts))]
    for table in ("aibridge_interceptions", "aibridge_token_usages", "aibridge_user_prompts"):
        written.append(json.dumps(gw.query(f"select * from {table}"), default=str))
    assert any("/v1/messages" in text for text in written)  # the search covers what was written
    assert list((gw.workdir / "dumps").rglob("*.req.txt")) and (gw.workdir / "aigw.log.json").stat().st_size
    for secret in (key, OTHER_SECRET):
        assert not [text[:200] for text in written if secret in text]


def test_credentials_behind_semicolons_brackets_or_any_name_are_removed(gw: Gateway, upstream: FakeUpstream) -> None:
    """`;` separates parameters for some servers, `key[]` is `key` to many frameworks, and a gateway key
    goes nowhere whatever parameter carries it: removed before upstream and never written."""
    key: str = gw.user_key  # type: ignore[attr-defined]
    body = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    for query in (f"beta=true;key={key}", f"key[]={key}", f"beta=true&key%5B0%5D={key}", f"beta=true&q={key}",
                  f"beta=true&whatever={key.replace('_', '%5F')};x=1"):
        response = exchange(gw.port, f"POST /api/v2/aibridge/anthropic/v1/messages?{query} HTTP/1.1\r\nHost: x\r\n"
                            f"x-api-key: {key}\r\ncontent-type: application/json\r\n"
                            f"content-length: {len(body)}\r\n\r\n".encode() + body, "POST")
        assert response.status == 200
    paths = [r.path for r in upstream.requests]
    assert paths == ["/v1/messages?beta=true", "/v1/messages", "/v1/messages?beta=true",
                     "/v1/messages?beta=true", "/v1/messages?beta=true;x=1"]
    secret = key.split("_", 2)[2]
    written = [gw.output(), *(p.read_text(errors="replace") for p in gw.workdir.rglob("*") if p.is_file()
                              and (p.suffix in (".log", ".json", ".txt") or "dumps" in p.parts))]
    written.append(json.dumps(gw.query("select * from aibridge_interceptions"), default=str))
    assert not [text for text in written if secret in text]
