"""Redaction (addons/sinks/redaction.py) and what `aigw web` serializes for the browser (addons/app/web/)."""

from __future__ import annotations

import json
from io import BytesIO

import pytest
from mitmproxy import http, io
from mitmproxy.addons.view import View
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tools.web import app

from addons.app.web.redact import flow_secrets, redact_flow_json, redact_header_text, redacted_copy, scrub_value
from addons.app.web.ui import WebUi
from addons.flow.state import FlowStates
from addons.sinks import redaction

KEY = "sk-ant-api03-PROVIDER-SECRET-aaaaaaaaaaaaaaaa"
BYOK = "sk-proj-USERS-OWN-bbbbbbbbbbbbbbbbbbbb"


@pytest.mark.parametrize(("name", "value", "shown"), [
    ("Authorization", f"Bearer {KEY}", "Bearer [REDACTED]"),
    ("authorization", "AWS4-HMAC-SHA256 Credential=AKIA/x, SignedHeaders=host, Signature=abc",
     "AWS4-HMAC-SHA256 [REDACTED]"),
    ("Proxy-Authorization", "Basic YWlndzpzZWNyZXQ=", "Basic [REDACTED]"),
    ("X-Api-Key", KEY, "[REDACTED]"),
    ("x-amz-security-token", "FwoGZXIvYXdzE", "[REDACTED]"),
    ("Cookie", "session=abc", "[REDACTED]"),
    ("Set-Cookie", "a=b; HttpOnly", "[REDACTED]"),
    ("X-Aigw-Token", "aigw_x_y", "[REDACTED]"),
    ("x-github-token", "ghu_abc", "[REDACTED]"),
    ("Authorization", "opaque-token", "[REDACTED]"),
    ("content-type", "application/json", "application/json"),
    ("x-amz-date", "20260101T000000Z", "20260101T000000Z"),
    ("x-claude-code-session-id", "sess-1", "sess-1"),
])
def test_header_values(name: str, value: str, shown: str) -> None:
    assert redaction.redact_header_value(name, value) == shown


def test_urls_and_values() -> None:
    assert redaction.redact_url("https://u:p@h/x?beta=true&key=abc&X-Amz-Signature=s#f") == \
        "https://[REDACTED]@h/x?beta=true&key=[REDACTED]&X-Amz-Signature=[REDACTED]#f"
    assert redaction.redact_url("/v1/messages?beta=true") == "/v1/messages?beta=true"
    values = redaction.credential_values([("authorization", f"Bearer {KEY}"), ("x-api-key", "short"),
                                          ("accept", "*/*")])
    assert values == {f"Bearer {KEY}", KEY}
    assert redaction.scrub(f"a {KEY} b", {KEY}) == "a [REDACTED] b"
    assert redaction.scrub_bytes(KEY.encode() * 2, {KEY}) == b"[REDACTED][REDACTED]"


def provider_flow() -> http.HTTPFlow:
    """A flow as it looks while the request is in flight: the provider key injected."""
    req = tutils.treq(host="api.anthropic.com", port=443, path=b"/v1/messages?beta=true", headers=http.Headers(
        [(b"x-api-key", KEY.encode()), (b"authorization", f"Bearer {BYOK}".encode()),
         (b"cookie", b"c=1"), (b"content-type", b"application/json")]),
        content=b'{"model":"m","note":"' + BYOK.encode() + b'"}')
    resp = tutils.tresp(headers=http.Headers([(b"set-cookie", b"s=1"), (b"content-type", b"application/json")]),
                        content=b'{"ok":true}')
    return tflow.tflow(req=req, resp=resp)


def test_serialized_flow_never_shows_a_credential() -> None:
    f = provider_flow()
    data = redact_flow_json(app.flow_to_json(f), flow_secrets(f, {KEY}))
    text = json.dumps(data)
    assert KEY not in text and BYOK not in text and "c=1" not in text and "s=1" not in text
    headers = dict(data["request"]["headers"])
    assert headers["x-api-key"] == "[REDACTED]"
    assert headers["authorization"] == "Bearer [REDACTED]"
    assert headers["content-type"] == "application/json"
    assert dict(data["response"]["headers"])["set-cookie"] == "[REDACTED]"
    assert data["request"]["path"] == "/v1/messages?beta=true"
    # The live flow itself is untouched: it still has to reach upstream with the key.
    assert f.request.headers["x-api-key"] == KEY


def test_exported_copies_and_command_results_are_redacted() -> None:
    f = provider_flow()
    dup = redacted_copy(f, {KEY})
    assert dup.request.headers["x-api-key"] == "[REDACTED]"
    assert BYOK.encode() not in dup.request.raw_content  # scrubbed from the body too
    bio = BytesIO()
    io.FlowWriter(bio).add(dup)
    assert KEY.encode() not in bio.getvalue() and BYOK.encode() not in bio.getvalue()
    assert f.request.headers["x-api-key"] == KEY

    curl = f"curl -H 'x-api-key: {KEY}' -H 'authorization: Bearer {BYOK}' -H 'accept: */*' https://h/"
    out = redact_header_text(curl)
    assert KEY not in out and BYOK not in out and "accept: */*" in out
    assert "x-api-key: [REDACTED]" in out and "authorization: Bearer [REDACTED]" in out
    assert scrub_value({"value": [KEY, {"k": BYOK}]}, {KEY, BYOK}) == {"value": ["[REDACTED]", {"k": "[REDACTED]"}]}


def test_web_ui_scrubs_the_kept_request_once_sent() -> None:
    f = provider_flow()
    WebUi.scrub_sent_request(f)
    assert f.request.headers["x-api-key"] == "[REDACTED]"
    assert f.request.headers["authorization"] == "Bearer [REDACTED]"
    assert f.request.headers["content-type"] == "application/json"
    # The values it held are still scrubbed wherever they show up (here: the body).
    assert BYOK in f.request.text and BYOK in flow_secrets(f)


def test_flow_bound_keeps_the_newest_and_every_live_flow() -> None:
    view = View()
    web = WebUi(FlowStates())
    with taddons.context(view, web) as tctx:
        tctx.master.view = view  # type: ignore[attr-defined]
        tctx.configure(web, aigw_web_max_flows=3)
        flows = [tflow.tflow(resp=True) for _ in range(6)]
        for f in flows:
            f.live = False
        flows[0].live = True  # oldest, but still running: never dropped
        view.add(flows)
        assert web.trim() == 3
        assert [f.id for f in view._store.values()] == [flows[0].id, flows[4].id, flows[5].id]
        tctx.configure(web, aigw_web_max_flows=0)  # unbounded
        view.add([tflow.tflow(resp=True)])
        assert web.trim() == 0


async def test_web_master_serializes_only_redacted_flows() -> None:
    """What `aigw web` sends to the browser: live updates and the flow list, through its own handlers."""
    import tornado.httputil
    from mitmproxy import options

    from addons.app.web import master as web

    master = web.AigwWebMaster(options.Options(), {KEY})
    sent: list[tuple[str, dict]] = []

    class Browser:
        def _broadcast_flow(self, kind: str, f: http.HTTPFlow, flow_json: dict) -> None:
            sent.append((kind, flow_json))

    browser = Browser()
    app.ClientConnection.connections.add(browser)  # type: ignore[arg-type]
    try:
        f = provider_flow()
        master.view.add([f])
        master.view.update([f])
    finally:
        app.ClientConnection.connections.discard(browser)  # type: ignore[arg-type]
    assert [kind for kind, _ in sent] == ["flows/add", "flows/update"]
    for _, flow_json in sent:
        assert KEY not in json.dumps(flow_json) and BYOK not in json.dumps(flow_json)
    assert "comment" in master.options.web_columns

    def handler_for(path: str) -> type:
        request = tornado.httputil.HTTPServerRequest(method="GET", uri=path)
        return master.app.find_handler(request).handler_class

    assert handler_for("/flows.json") is web._Flows
    assert handler_for("/flows/dump") is web._DumpFlows
    assert handler_for(f"/flows/{f.id}/request/content.data") is web._FlowContent
    assert handler_for(f"/flows/{f.id}/response/content/auto.json") is web._FlowContentView
    assert handler_for("/commands/export") is web._ExecuteCommand
    assert handler_for("/options.json") is web._Options  # display options only (tests/security/test_web_ui.py)
    assert handler_for("/filter-help") is app.FilterHelp  # everything else is mitmweb's own


def test_query_credentials_encoded_names() -> None:
    assert redaction.redact_url("/v1/x?%6Bey=abc&API%5FKEY=d&x_api_key=e&page=2") == \
        "/v1/x?%6Bey=[REDACTED]&API%5FKEY=[REDACTED]&x_api_key=[REDACTED]&page=2"
    assert redaction.strip_credential_query("beta=true&Key=s&%6Bey=t&api_key=u&page_token=p") == \
        "beta=true&page_token=p"
    assert redaction.strip_credential_query("key=s") == ""
