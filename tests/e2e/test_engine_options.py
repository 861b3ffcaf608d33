"""mitmproxy's own `--set` options still work under `aigw serve`, although idle built-ins are dropped."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import Gateway, clean_env, provider_env

pytestmark = pytest.mark.e2e


def test_set_option_of_an_otherwise_idle_builtin_takes_effect(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = Gateway(tmp_path, clean_env(**provider_env(upstream.url)),
                 extra_args=["--set", "modify_headers=/~q/X-Aigw-Engine/on"])
    key = gw.create_key("alice")
    gw.start()
    try:
        r = httpx.post(f"{gw.url}/api/v2/aibridge/anthropic/v1/messages", trust_env=False, timeout=30,
                       headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                       json={"model": "claude-sonnet-4-5", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "hi"}]})
    finally:
        gw.stop()
    assert r.status_code == 200, r.text
    seen = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
    assert seen.get("x-aigw-engine") == "on"
