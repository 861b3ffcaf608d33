"""mitmweb's commands under `aigw web`, in process: exports, cuts and saves see redacted copies of
the flows (headers, query-string credentials, bodies echoing a key), the live flows stay intact,
and the gateway's own API flows never enter the flow store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import io as mitm_io
from mitmproxy import options
from mitmproxy.test import tflow, tutils

from addons.app.web.master import AigwWebMaster, is_own_api

PROVIDER_KEY = "sk-ant-provider-key-6d1e90aa"
GATEWAY_KEY = "aigw_0a1b2c3d_" + "G" * 40
QUERY_KEY = "aigw_0a1b2c3d_" + "Q" * 40
SECRETS = (PROVIDER_KEY, GATEWAY_KEY, QUERY_KEY)


def provider_flow() -> Any:
    """A flow as it is kept while its request waits for the upstream (credentials still in it)."""
    f = tflow.tflow(resp=tutils.tresp(content=b'{"echo": "' + PROVIDER_KEY.encode() + b'"}'))
    f.request.host, f.request.port, f.request.scheme = "api.anthropic.com", 443, "https"
    f.request.path = f"/v1/messages?beta=true&key={QUERY_KEY}"
    f.request.headers["x-api-key"] = PROVIDER_KEY
    f.request.headers["x-aigw-token"] = GATEWAY_KEY
    f.request.headers["authorization"] = f"Bearer {GATEWAY_KEY}"
    f.request.content = json.dumps({"model": "m", "note": GATEWAY_KEY}).encode()
    return f


def own_api_flow(path: str) -> Any:
    f = tflow.tflow(resp=tutils.tresp(content=json.dumps({"key": GATEWAY_KEY}).encode()))
    f.request.path = path
    return f


def with_master(test: Callable[[AigwWebMaster], None]) -> None:
    async def run() -> None:
        master = AigwWebMaster(options.Options(), {PROVIDER_KEY})
        test(master)

    asyncio.run(run())


def assert_clean(data: str | bytes, where: str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for secret in SECRETS:
        assert secret not in text, f"{secret[:12]}… in {where}"


def test_exports_cuts_and_saves_are_redacted(tmp_path: Path) -> None:
    def test(master: AigwWebMaster) -> None:
        live = provider_flow()
        master.view.add([live])
        spec = f"@{live.id}"
        call = master.commands.call_strings
        for fmt in ("curl", "httpie", "raw", "raw_request", "raw_response"):
            text = call("export", [fmt, spec])
            assert_clean(text, f"export {fmt}")
        assert "[REDACTED]" in call("export", ["curl", spec]) and "key=[REDACTED]" in call("export", ["curl", spec])
        assert_clean(json.dumps(call("cut", [spec, "request.url,request.headers,request.text,response.text"]),
                                default=str), "cut")
        files = {name: tmp_path / name for name in ("a.mitm", "a.har", "a.curl", "a.csv")}
        call("save.file", ["@all", str(files["a.mitm"])])
        call("save.har", ["@all", str(files["a.har"])])
        call("export.file", ["raw", spec, str(files["a.curl"])])
        call("cut.save", ["@all", "request.url,request.headers", str(files["a.csv"])])
        for name, path in files.items():
            assert path.stat().st_size > 0
            assert_clean(path.read_bytes(), name)
        saved = list(mitm_io.FlowReader(files["a.mitm"].open("rb")).stream())
        assert saved[0].request.headers["x-api-key"] == "[REDACTED]"
        # The live flow itself is untouched: it still has to reach its upstream.
        assert live.request.headers["x-api-key"] == PROVIDER_KEY and QUERY_KEY in live.request.path

    with_master(test)


@pytest.mark.parametrize("path", ["/api/v2/aibridge/keys", "/api/v2/aibridge/keys/aigw_0a1b2c3d",
                                  "/api/v2/aibridge/query", "/api/v2/aibridge/admin/snapshot",
                                  "/api/v2/aibridge/sessions?user=a", "/api/v2/aibridge/interceptions/x",
                                  "/healthz", "/healthz?x=1"])
def test_own_api_flows_never_enter_the_store(path: str) -> None:
    def test(master: AigwWebMaster) -> None:
        f = own_api_flow(path)
        assert is_own_api(f)
        master.view.requestheaders(f)
        master.view.response(f)
        assert master.view.get_by_id(f.id) is None and len(master.view) == 0
        assert master.view.resolve("@all") == []
        # Provider routes on the same listener are shown.
        g = own_api_flow("/api/v2/aibridge/anthropic/v1/messages")
        assert not is_own_api(g)
        master.view.requestheaders(g)
        assert master.view.get_by_id(g.id) is g

    with_master(test)


def test_proxied_flows_to_the_same_paths_are_not_own_api() -> None:
    f = own_api_flow("/api/v2/aibridge/keys")
    f.request.host, f.request.scheme, f.request.port = "example.com", "https", 443
    f.request.authority = "example.com"  # absolute form: a proxied request, not the gateway's API
    assert not is_own_api(f)
