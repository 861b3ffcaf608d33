"""The gateway key never reaches a provider, whatever combination of credential headers carries it:
an empty X-Aigw-Token is no BYOK, the gateway key sent twice or next to the client's own key is dropped,
and on Copilot (always the user's own credential) a gateway key in place of the GitHub token is a 401."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway

pytestmark = pytest.mark.e2e

OWN = "sk-own-provider-key-0123456789"
SHAPED = "aigw_0badc0de_" + "x" * 40  # gateway-key-shaped, not a valid key
ROUTES = {
    "anthropic": ("/api/v2/aibridge/anthropic/v1/messages",
                  {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    "openai": ("/api/v2/aibridge/openai/v1/chat/completions",
               {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "copilot": ("/api/v2/aibridge/copilot/chat/completions",
                {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "models": ("/api/v2/aibridge/openai/v1/models", None),
}


def combinations(key: str) -> list[dict[str, str]]:
    bearer = f"Bearer {key}"
    return [
        {"x-api-key": key},
        {"authorization": bearer},
        {"x-aigw-token": "", "x-api-key": key},  # (b) empty BYOK header
        {"x-aigw-token": "", "authorization": bearer},
        {"x-aigw-token": key, "x-api-key": key},  # (c) both the gateway key
        {"x-aigw-token": key, "authorization": bearer},
        {"x-aigw-token": key, "x-api-key": OWN, "authorization": bearer},  # (d) own key plus gateway key
        {"x-aigw-token": key, "authorization": f"Bearer {OWN}", "x-api-key": key},
        {"x-api-key": OWN, "authorization": bearer},
        {"x-api-key": key, "authorization": f"Bearer {SHAPED}"},
        {"x-aigw-token": key, "x-api-key": SHAPED},
        {"x-aigw-token": key, "authorization": f"bearer   {SHAPED}"},
    ]


@pytest.mark.parametrize("route", list(ROUTES))
def test_the_gateway_key_never_reaches_upstream(gateway: Gateway, upstream: FakeUpstream, route: str) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    path, body = ROUTES[route]
    statuses = []
    for headers in combinations(key):
        if body is None:
            response = httpx.get(gateway.url + path, headers=headers, trust_env=False)
        else:
            response = httpx.post(gateway.url + path, headers=headers, json=body, trust_env=False)
        statuses.append(response.status_code)
        assert key not in response.text
    assert 200 in statuses  # the search covers forwarded requests
    for seen in upstream.requests:
        sent = json.dumps(seen.headers) + seen.path
        assert key not in sent and key.partition("_")[2][:8] not in sent
        assert SHAPED not in sent and "aigw_" not in sent, seen.headers


def test_copilot_with_only_the_gateway_key_is_told_what_to_send(gateway: Gateway, upstream: FakeUpstream) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    path, body = ROUTES["copilot"]
    for headers in ({"authorization": f"Bearer {key}"}, {"x-aigw-token": key, "authorization": f"Bearer {key}"},
                    {"x-aigw-token": key, "x-api-key": SHAPED}):
        response = httpx.post(gateway.url + path, headers=headers, json=body, trust_env=False)
        assert response.status_code == 401
        message = response.json()["error"]["message"]
        assert "own provider credential" in message and "X-Aigw-Token" in message
    assert upstream.requests == []
    # The way that works: the GitHub token goes upstream, the gateway key does not.
    response = httpx.post(gateway.url + path, headers={"x-aigw-token": key, "authorization": "Bearer gho_user"},
                          json=body, trust_env=False)
    assert response.status_code == 200
    assert upstream.requests[-1].headers["authorization"] == "Bearer gho_user"
