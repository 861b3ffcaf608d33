"""`aigw keys revoke` takes a key's id or the whole key, and never prints a secret."""

from __future__ import annotations

import json

import httpx
import pytest

from addons.store.keys import key_id_from, key_id_of, new_secret
from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, clean_env, provider_env

pytestmark = pytest.mark.e2e

MESSAGES = "/api/v2/aibridge/anthropic/v1/messages"


def works(gw: Gateway, key: str) -> bool:
    response = httpx.post(gw.url + MESSAGES, trust_env=False, timeout=30,
                          json={"model": "claude-haiku-4-5", "max_tokens": 5,
                                "messages": [{"role": "user", "content": "x"}]},
                          headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    return response.status_code == 200


def test_key_id_from_accepts_an_id_or_a_whole_key_and_never_echoes() -> None:
    key_id, full = new_secret()
    assert key_id_from(key_id) == key_id
    assert key_id_from(full) == key_id
    assert key_id_from(f"  {full}\n") == key_id
    for bad in (full + "x", full[:-1], "sk-ant-api03-" + full[-40:], "aigw_XYZ", full.upper(), ""):
        with pytest.raises(ValueError) as raised:
            key_id_from(bad)
        assert not bad.strip() or bad.strip() not in str(raised.value)


@pytest.mark.parametrize("running", [True, False], ids=["through the gateway", "on the file"])
def test_revoke_by_whole_key_or_id(tmp_path, upstream: FakeUpstream, running: bool) -> None:
    gw = Gateway(tmp_path, clean_env(**provider_env(upstream.url)))
    by_key, by_id = gw.create_key("alice"), gw.create_key("bob")
    if running:
        gw.start()
    try:
        result = gw.cli("keys", "revoke", by_key)
        key_id = key_id_of(by_key)
        assert result.stdout.strip() == f"Revoked {key_id}."
        assert by_key not in result.stdout + result.stderr and by_key[-40:] not in result.stdout + result.stderr

        result = gw.cli("keys", "revoke", key_id_of(by_id) or "")
        assert result.stdout.strip() == f"Revoked {key_id_of(by_id)}."

        # Again: refused, naming the id only.
        again = gw.cli("keys", "revoke", by_key, check=False)
        assert again.returncode != 0 and key_id in again.stderr and by_key[-40:] not in again.stderr

        # A secret that is not a gateway key (a provider key pasted by mistake) is not echoed.
        pasted = "sk-ant-api03-" + "Q" * 40
        wrong = gw.cli("keys", "revoke", pasted, check=False)
        assert wrong.returncode != 0 and "Q" * 10 not in wrong.stdout + wrong.stderr
        # A key with a wrong secret part still names nothing secret.
        mangled = by_id[:-3] + "%%%"
        wrong = gw.cli("keys", "revoke", mangled, check=False)
        assert wrong.returncode != 0 and by_id[14:-3] not in wrong.stdout + wrong.stderr

        if running:
            assert not works(gw, by_key) and not works(gw, by_id)
        listed = {k["id"]: k for k in json.loads(gw.cli("keys", "list", "--json").stdout)}
        assert listed[key_id]["revoked_at"] and listed[key_id_of(by_id)]["revoked_at"]
    finally:
        if running:
            assert gw.stop() == 0


def test_the_api_never_echoes_a_key_in_the_path(gateway: Gateway) -> None:
    key = gateway.create_key("carol")
    auth = {"authorization": f"Bearer {gateway.admin_key}"}  # type: ignore[attr-defined]
    for path in (key + "-", key + "/x", "sk-ant-" + key[-40:]):
        response = httpx.delete(f"{gateway.url}/api/v2/aibridge/keys/{path}", headers=auth, trust_env=False)
        assert response.status_code in (400, 404)
        assert key[-40:] not in response.text
    response = httpx.delete(f"{gateway.url}/api/v2/aibridge/keys/{key}", headers=auth, trust_env=False)
    assert response.status_code == 200 and response.json() == {"id": key_id_of(key), "revoked": True}
    assert key[-40:] not in response.text
