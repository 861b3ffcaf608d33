"""Pass-through routes carry the organisation's key, so each allows only the methods clients use:
`DELETE /v1/models/ft:…` (deletes a fine-tuned model), writes to Anthropic's model list, and deleting
stored responses or conversations are 404 in the provider's shape and never forwarded."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway

pytestmark = pytest.mark.e2e

ANTHROPIC = "/api/v2/aibridge/anthropic"
OPENAI = "/api/v2/aibridge/openai/v1"

REFUSED = [
    ("DELETE", f"{OPENAI}/models/ft:gpt-4o-mini:org:custom:abc123"),
    ("POST", f"{OPENAI}/models/gpt-4o"),
    ("POST", f"{ANTHROPIC}/v1/models/x"),
    ("DELETE", f"{ANTHROPIC}/v1/models"),
    ("TRACE", f"{ANTHROPIC}/v1/models/x"),
    ("GET", f"{ANTHROPIC}/v1/messages/count_tokens"),
    ("DELETE", f"{OPENAI}/responses/resp_someone_elses"),
    ("PUT", f"{OPENAI}/responses/resp_1"),
    ("DELETE", f"{OPENAI}/conversations/conv_someone_elses"),
    ("DELETE", f"{OPENAI}/conversations/conv_1/items/item_1"),
    ("PATCH", f"{OPENAI}/conversations/conv_1"),
    ("GET", f"{ANTHROPIC}/api/event_logging/batch"),
]

ALLOWED = [
    ("GET", f"{OPENAI}/models"),
    ("GET", f"{OPENAI}/models/gpt-4o"),
    ("GET", f"{ANTHROPIC}/v1/models"),
    ("GET", f"{ANTHROPIC}/v1/models/claude-x"),
    ("POST", f"{ANTHROPIC}/v1/messages/count_tokens?beta=true"),
    ("POST", f"{ANTHROPIC}/api/event_logging/batch"),
    ("GET", f"{OPENAI}/responses/resp_1"),
    ("GET", f"{OPENAI}/responses/resp_1/input_items"),
    ("POST", f"{OPENAI}/responses/resp_1/cancel"),
    ("POST", f"{OPENAI}/responses/compact"),
    ("POST", f"{OPENAI}/conversations"),
    ("GET", f"{OPENAI}/conversations/conv_1/items"),
]


@pytest.mark.parametrize(("method", "path"), REFUSED)
def test_other_methods_are_refused(gateway: Gateway, upstream: FakeUpstream, method: str, path: str) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    response = httpx.request(method, gateway.url + path, headers={"x-api-key": key}, content=b"{}",
                             trust_env=False)
    assert response.status_code == 404
    error = response.json()
    if path.startswith(ANTHROPIC):
        assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
    else:
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["code"] == "not_found_error"
    assert "route not supported" in error["error"]["message"]
    assert upstream.requests == []


def test_the_methods_clients_use_still_pass(gateway: Gateway, upstream: FakeUpstream) -> None:
    key: str = gateway.user_key  # type: ignore[attr-defined]
    for method, path in ALLOWED:
        httpx.request(method, gateway.url + path, headers={"x-api-key": key},
                      content=b"{}" if method == "POST" else None, trust_env=False)
    seen = [(s.method, s.path) for s in upstream.requests]
    assert [m for m, _ in seen] == [m for m, _ in ALLOWED], seen  # each one forwarded, in order
