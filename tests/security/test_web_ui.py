"""`aigw web` shows no secrets: the gateway's own API stays out of the UI, and every flow list,
dump, export, cut and save of mitmweb is redacted (headers, query-string credentials, bodies),
also while a request is still waiting for its upstream."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream, Gate, Reply
from tests.gateway_process import ANTHROPIC_PROVIDER_KEY, Gateway, clean_env, free_port, provider_env

pytestmark = pytest.mark.e2e

PASSWORD = "web-ui-password-4f2a"
MESSAGES = "/api/v2/aibridge/anthropic/v1/messages"
BODY = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
OWN_API = ("/api/v2/aibridge/keys", "/api/v2/aibridge/query", "/api/v2/aibridge/sessions",
           "/api/v2/aibridge/interceptions", "/api/v2/aibridge/admin", "/healthz")
EXPORT_FORMATS = ("curl", "httpie", "raw", "raw_request", "raw_response")


class Ui:
    """mitmweb's HTTP API as the browser uses it (password, XSRF cookie)."""

    def __init__(self, port: int) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30,
                                   headers={"authorization": f"Bearer {PASSWORD}"})
        # Tornado's XSRF check: the header must match the cookie (a plain 32-hex-digit token is valid).
        token = secrets.token_hex(16)
        self.client.cookies.set("_mitmproxy_xsrf", token)
        self.client.headers["x-xsrftoken"] = token

    def flows(self) -> list[dict[str, Any]]:
        return self.client.get("/flows.json").json()  # type: ignore[no-any-return]

    def command(self, name: str, *args: str) -> Any:
        response = self.client.post(f"/commands/{name}", json={"arguments": list(args)})
        assert response.status_code == 200, response.text
        data = response.json()
        assert "error" not in data, data
        return data["value"]


@pytest.fixture(scope="module")
def web(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Ui]]:
    workdir = tmp_path_factory.mktemp("web")
    port = free_port()
    gw = Gateway(workdir, clean_env(**provider_env(upstream.url)), command="web",
                 extra_args=["--set", f"web_port={port}", "--set", f"web_password={PASSWORD}",
                             "--set", "web_open_browser=false"])
    gw.admin_key = gw.create_key("root", admin=True)  # type: ignore[attr-defined]
    gw.user_key = gw.create_key("alice")  # type: ignore[attr-defined]
    gw.start()
    try:
        yield gw, Ui(port)
    finally:
        assert gw.stop() == 0


def secrets_of(gw: Gateway) -> list[str]:
    return [ANTHROPIC_PROVIDER_KEY, gw.admin_key, gw.user_key, gw.admin_token()]  # type: ignore[attr-defined]


def assert_clean(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret in {where}"
        assert secret[-24:] not in text, f"part of a secret in {where}"


def test_own_api_flows_never_appear_and_nothing_shows_a_secret(web: tuple[Gateway, Ui], tmp_path: Path) -> None:
    gw, ui = web
    admin = {"authorization": f"Bearer {gw.admin_key}"}  # type: ignore[attr-defined]
    user = {"x-api-key": gw.user_key, "anthropic-version": "2023-06-01"}  # type: ignore[attr-defined]
    # Provider traffic: a normal call, one that also puts the key in the query string, one with only that.
    assert httpx.post(gw.url + MESSAGES, json=BODY, headers=user, trust_env=False).status_code == 200
    assert httpx.post(gw.url + MESSAGES, params={"key": gw.user_key}, json=BODY,  # type: ignore[attr-defined]
                      headers=user, trust_env=False).status_code == 200
    assert httpx.post(gw.url + MESSAGES, params={"key": gw.user_key}, json=BODY,  # type: ignore[attr-defined]
                      headers={"anthropic-version": "2023-06-01"}, trust_env=False).status_code == 401
    # The gateway's own API, including a new key's secret in a response.
    created = httpx.post(gw.url + "/api/v2/aibridge/keys", json={"user": "bob"}, headers=admin, trust_env=False)
    assert created.status_code == 201
    new_key = created.json()["key"]
    for method, path, body in (("GET", "/api/v2/aibridge/keys", None),
                               ("POST", "/api/v2/aibridge/query", {"sql": "select key_hash from api_keys"}),
                               ("GET", "/api/v2/aibridge/sessions", None),
                               ("GET", "/api/v2/aibridge/interceptions", None),
                               ("GET", "/api/v2/aibridge/admin/prices/missing", None),
                               ("GET", "/healthz", None)):
        assert httpx.request(method, gw.url + path, json=body, headers=admin, trust_env=False).status_code == 200
    assert httpx.delete(f"{gw.url}/api/v2/aibridge/keys/{new_key}", headers=admin, trust_env=False).status_code == 200
    hidden = [*secrets_of(gw), new_key]

    flows = ui.flows()
    paths = [f["request"]["path"] for f in flows]
    assert len([p for p in paths if "/v1/messages" in p]) == 3, paths  # forwarded ones show the upstream path
    assert not [p for p in paths if p.startswith(OWN_API)], paths
    assert_clean(json.dumps(flows), hidden, "/flows")
    assert any("key=[REDACTED]" in p for p in paths)  # the query-string credential, shown redacted

    dump = ui.client.get("/flows/dump")
    assert dump.status_code == 200 and b"[REDACTED]" in dump.content
    assert_clean(dump.content.decode("utf-8", "replace"), hidden, "/flows/dump")
    for endpoint in ("/events", "/options", "/state"):
        assert_clean(ui.client.get(endpoint).text, hidden, endpoint)

    for f in flows:
        for fmt in EXPORT_FORMATS:
            try:
                text = ui.command("export", fmt, f"@{f['id']}")
            except AssertionError:
                continue  # e.g. raw_response of a flow without one
            assert_clean(text, hidden, f"export {fmt}")
        for part in ("request/content.data", "response/content.data"):
            assert_clean(ui.client.get(f"/flows/{f['id']}/{part}").text, hidden, part)
    curl = ui.command("export", "curl", f"@{flows[0]['id']}")
    assert "x-api-key: [REDACTED]" in curl
    cut = ui.command("cut", "@all", "request.url,request.headers,request.text,response.text")
    assert_clean(json.dumps(cut), hidden, "cut")

    files = {name: tmp_path / name for name in ("flows.mitm", "flows.har", "curl.txt", "cut.csv")}
    ui.command("save.file", "@all", str(files["flows.mitm"]))
    ui.command("save.har", "@all", str(files["flows.har"]))
    ui.command("export.file", "curl", f"@{flows[0]['id']}", str(files["curl.txt"]))
    ui.command("cut.save", "@all", "request.url,request.headers", str(files["cut.csv"]))
    for name, path in files.items():
        assert path.exists() and path.stat().st_size > 0, name
        assert_clean(path.read_bytes().decode("utf-8", "replace"), hidden, name)
    assert "[REDACTED]" in files["flows.har"].read_text()


def test_a_request_waiting_for_its_upstream_exports_redacted(web: tuple[Gateway, Ui], upstream: FakeUpstream,
                                                             tmp_path: Path) -> None:
    gw, ui = web
    gate = Gate(timeout=30)
    upstream.queue(Reply(head_gate=gate, chunks=[json.dumps({"type": "message"}).encode()]))
    done: list[int] = []
    headers = {"x-api-key": gw.user_key, "anthropic-version": "2023-06-01"}  # type: ignore[attr-defined]
    worker = threading.Thread(target=lambda: done.append(httpx.post(
        gw.url + MESSAGES, json=BODY, headers=headers, trust_env=False, timeout=30).status_code))
    worker.start()
    try:
        upstream_seen = _wait(lambda: upstream.requests)  # the provider key has been put in the request
        assert upstream_seen[0].headers.get("x-api-key") == ANTHROPIC_PROVIDER_KEY
        live = _wait(lambda: [f for f in ui.flows() if f.get("response") is None])
        flow_id = live[0]["id"]
        hidden = secrets_of(gw)
        for fmt in ("curl", "httpie", "raw_request"):
            assert_clean(ui.command("export", fmt, f"@{flow_id}"), hidden, f"export {fmt} (in flight)")
        assert_clean(json.dumps(ui.command("cut", f"@{flow_id}", "request.headers")), hidden, "cut (in flight)")
        path = tmp_path / "live.mitm"
        ui.command("save.file", f"@{flow_id}", str(path))
        assert_clean(path.read_bytes().decode("utf-8", "replace"), hidden, "save.file (in flight)")
        assert_clean(ui.client.get("/flows/dump").content.decode("utf-8", "replace"), hidden, "dump (in flight)")
    finally:
        gate.open()
        worker.join(30)
    assert done == [200]


def _wait(check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def test_the_ui_observes_and_does_not_steer(web: tuple[Gateway, Ui], tmp_path: Path) -> None:
    gw, ui = web
    script = tmp_path / "evil.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    # Options that change the traffic, run code or write files: refused; display options: fine.
    for change in ({"scripts": [str(script)]}, {"ssl_insecure": True}, {"intercept": "~q"},
                   {"mode": ["regular@127.0.0.1:0"]}, {"save_stream_file": str(tmp_path / "s.mitm")},
                   {"view_order": "time", "upstream_cert": False}):
        response = ui.client.put("/options", json=change)
        assert response.status_code == 403, (change, response.text)
    assert ui.client.put("/options", json={"view_order": "size"}).status_code == 200
    options = ui.client.get("/options").json()
    assert options["scripts"]["value"] == [] and options["ssl_insecure"]["value"] is False
    assert not options["intercept"]["value"] and options["view_order"]["value"] == "size"
    # Commands that configure, run code or inject: refused.
    for name, args in (("set", ["scripts", str(script)]), ("set", ["intercept", "~q"]),
                       ("options.load", [str(script)]), ("options.reset", []), ("script.run", ["@all", str(script)]),
                       ("view.flows.load", [str(script)])):
        result = ui.client.post(f"/commands/{name}", json={"arguments": args}).json()
        assert "does not run" in result.get("error", ""), (name, result)
    assert not (tmp_path / "ran").exists()
    # A provider call still goes through, and is not held.
    assert httpx.post(gw.url + MESSAGES, json=BODY, trust_env=False, timeout=30,
                      headers={"x-api-key": gw.user_key, "anthropic-version": "2023-06-01"}  # type: ignore[attr-defined]
                      ).status_code == 200


def test_intercept_cannot_be_set_at_start_either(upstream: FakeUpstream, tmp_path: Path) -> None:
    gw = Gateway(tmp_path, clean_env(**provider_env(upstream.url)), command="web",
                 extra_args=["--set", f"web_port={free_port()}", "--set", "web_open_browser=false",
                             "--set", "intercept=~q"])
    with pytest.raises(AssertionError, match="does not intercept"):
        gw.start()
    gw.stop()
