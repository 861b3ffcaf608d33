"""The canary scan: a session of traffic with unique secrets, then every place the gateway writes or
shows anything is searched for them — zero hits.

Secrets: two provider keys, the user's gateway key (also once in the query string), an admin key,
a key created through the API, two BYOK keys, the local admin token. Traffic: base URL and
proxy mode (HTTPS_PROXY with the gateway key as proxy password), organisation key and BYOK,
blocking and streaming. Places: every log line (human and JSON, structured records on, debug
verbosity), every dump file, every DuckDB table and view, `/metrics`, and mitmweb's flow list,
flow dump, events, options, bodies and every export format of every flow.
"""

from __future__ import annotations

import json
import secrets
import ssl
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from tests.fakes.tls import Pki, TlsFakeUpstream
from tests.gateway_process import Gateway, clean_env, free_port

pytestmark = pytest.mark.e2e

P = "CODER_AIBRIDGE_PROVIDER_"
PASSWORD = "web-ui-password-canary"
EXPORT_FORMATS = ("curl", "httpie", "raw", "raw_request", "raw_response")


def canary(prefix: str) -> str:
    return f"{prefix}CANARY{secrets.token_hex(16)}"


ANTHROPIC_KEY = canary("sk-ant-api03-")
OPENAI_KEY = canary("sk-proj-")
BYOK_ANTHROPIC = canary("sk-ant-api03-byok")
BYOK_OPENAI = canary("sk-byok-")


def trust(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def scan(text: str, hidden: dict[str, str], where: str, hits: list[str]) -> None:
    for name, secret in hidden.items():
        # The whole secret, and any 20 characters of its random part (a partial leak is a leak).
        tail = secret[-32:]
        if secret in text or any(tail[i:i + 20] in text for i in range(0, len(tail) - 19, 4)):
            hits.append(f"{name} in {where}")


def test_no_secret_anywhere(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    fake = TlsFakeUpstream(pki.server_context("127.0.0.1", "localhost")).start()
    dumps, logs = tmp_path / "dumps", tmp_path / "logs"
    web_port, metrics_port = free_port(), free_port()
    env = clean_env(**{
        f"{P}0_TYPE": "anthropic", f"{P}0_KEY": ANTHROPIC_KEY, f"{P}0_BASE_URL": fake.url,
        f"{P}0_DUMP_DIR": str(dumps),
        f"{P}1_TYPE": "openai", f"{P}1_KEY": OPENAI_KEY, f"{P}1_BASE_URL": fake.url + "/v1",
        f"{P}1_DUMP_DIR": str(dumps),
        "CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS": "127.0.0.0/8",
        "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",
        "CODER_LOGGING_JSON": str(logs / "aigw.json"),
        "CODER_LOGGING_HUMAN": str(logs / "aigw.log"),
        "CODER_PROMETHEUS_ENABLE": "true",
        "CODER_PROMETHEUS_ADDRESS": f"127.0.0.1:{metrics_port}",
    })
    logs.mkdir()
    (tmp_path / "gw").mkdir()
    gw = Gateway(tmp_path / "gw", env, command="web", extra_args=[
        "--set", f"ssl_verify_upstream_trusted_ca={pki.ca_path}",
        "--set", f"aigw_proxy_allowed_ports=80,443,{fake.port}",
        "--set", f"web_port={web_port}", "--set", f"web_password={PASSWORD}", "--set", "web_open_browser=false",
        "--set", "termlog_verbosity=debug"])
    user_key = gw.create_key("alice")
    admin_key = gw.create_key("root", admin=True)
    gw.start()
    hidden = {"anthropic key": ANTHROPIC_KEY, "openai key": OPENAI_KEY, "gateway key": user_key,
              "admin key": admin_key, "BYOK anthropic key": BYOK_ANTHROPIC, "BYOK openai key": BYOK_OPENAI,
              "admin token": gw.admin_token()}
    ui = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", trust_env=False, timeout=30,
                      headers={"authorization": f"Bearer {PASSWORD}"})
    xsrf = secrets.token_hex(16)
    ui.cookies.set("_mitmproxy_xsrf", xsrf)
    ui.headers["x-xsrftoken"] = xsrf
    texts: dict[str, str] = {}
    try:
        session(gw, fake, user_key)
        created = httpx.post(gw.url + "/api/v2/aibridge/keys", json={"user": "bob"}, trust_env=False,
                             headers={"authorization": f"Bearer {admin_key}"})
        assert created.status_code == 201
        hidden["key created through the API"] = created.json()["key"]
        # Revoked by its whole key in the path (the CLI sends only the id; a hand-written call may not).
        assert httpx.delete(f"{gw.url}/api/v2/aibridge/keys/{created.json()['key']}", trust_env=False,
                            headers={"authorization": f"Bearer {admin_key}"}).status_code == 200
        assert len(gw.wait_for("select id from aibridge_interceptions where ended_at is not null",
                               lambda rows: len(rows) >= 8)) >= 8, "the session was not recorded"

        texts["/metrics"] = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False).text
        assert "aigw" in texts["/metrics"] or "aibridge" in texts["/metrics"]
        flows = ui.get("/flows.json").json()
        assert len(flows) >= 8
        texts["mitmweb /flows"] = json.dumps(flows)
        texts["mitmweb /flows/dump"] = ui.get("/flows/dump").content.decode("utf-8", "replace")
        for endpoint in ("/events", "/options", "/state"):
            texts[f"mitmweb {endpoint}"] = ui.get(endpoint).text
        for f in flows:
            for fmt in EXPORT_FORMATS:
                result = ui.post("/commands/export", json={"arguments": [fmt, f"@{f['id']}"]}).json()
                texts[f"mitmweb export {fmt} {f['request']['path']}"] = json.dumps(result)
            for part in ("request/content.data", "response/content.data", "request/content/auto.json",
                         "response/content/auto.json"):
                texts[f"mitmweb {part} {f['request']['path']}"] = ui.get(f"/flows/{f['id']}/{part}").text
        har = tmp_path / "flows.har"
        assert "error" not in ui.post("/commands/save.har", json={"arguments": ["@all", str(har)]}).json()
        texts["mitmweb save.har"] = har.read_text()
    finally:
        ui.close()
        assert gw.stop() == 0
        fake.stop()

    texts["gateway stdout/stderr"] = gw.output()
    for path in sorted(logs.iterdir()):
        texts[f"log {path.name}"] = path.read_text(errors="replace")
    assert "interception log" in texts["log aigw.json"]  # structured records were on
    dump_files = sorted(p for p in dumps.rglob("*") if p.is_file())
    assert len(dump_files) >= 8
    for path in dump_files:
        texts[f"dump {path.relative_to(dumps)}"] = path.read_text(errors="replace")
    conn = duckdb.connect(str(gw.db), read_only=True)
    try:
        relations = [r[0] for r in conn.execute(
            "select table_name from information_schema.tables where table_schema = 'main'").fetchall()]
        assert "aibridge_interceptions" in relations and "aibridge_sessions" in relations
        for name in relations:
            rows = conn.execute(f'select * from "{name}"').fetchall()
            texts[f"table {name}"] = repr(rows)
    finally:
        conn.close()

    hits: list[str] = []
    for where, text in texts.items():
        scan(text, hidden, where, hits)
    assert hits == []
    # The places scanned did carry credentials, shown redacted.
    assert "[REDACTED]" in texts["mitmweb /flows/dump"] and "key=[REDACTED]" in texts["mitmweb /flows"]
    assert any("[REDACTED]" in text for where, text in texts.items() if where.startswith("dump "))
    # The scan can find a secret where there is one.
    scan(f"x {BYOK_OPENAI[-25:]} y", hidden, "a planted line", hits)
    assert hits == ["BYOK openai key in a planted line"]


def session(gw: Gateway, fake: TlsFakeUpstream, user_key: str) -> None:
    """Base URL and proxy traffic, organisation key and BYOK, blocking and streaming."""
    base = gw.url + "/api/v2/aibridge"
    anthropic_body: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "hi"}]}
    openai_body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    a_headers = {"x-api-key": user_key, "anthropic-version": "2023-06-01"}
    calls = [
        httpx.post(f"{base}/anthropic/v1/messages", json=anthropic_body, headers=a_headers, trust_env=False),
        httpx.post(f"{base}/anthropic/v1/messages", json={**anthropic_body, "stream": True}, headers=a_headers,
                   trust_env=False),
        # The gateway key also in the query string: removed before upstream, redacted everywhere.
        httpx.post(f"{base}/openai/v1/chat/completions", params={"key": user_key}, json=openai_body,
                   headers={"authorization": f"Bearer {user_key}"}, trust_env=False),
        httpx.post(f"{base}/openai/v1/chat/completions", json={**openai_body, "stream": True},
                   headers={"authorization": f"Bearer {user_key}"}, trust_env=False),
        # BYOK through the base URL.
        httpx.post(f"{base}/anthropic/v1/messages", json=anthropic_body, trust_env=False,
                   headers={"x-aigw-token": user_key, "x-api-key": BYOK_ANTHROPIC, "anthropic-version": "2023-06-01"}),
    ]
    for response in calls:
        assert response.status_code == 200, response.text
    ca = gw.workdir / "certs" / "mitmproxy-ca-cert.pem"
    if not ca.exists():
        ca = next(gw.workdir.rglob("mitmproxy-ca-cert.pem"))
    with httpx.Client(proxy=f"http://aigw:{user_key}@127.0.0.1:{gw.port}", verify=trust(ca), trust_env=False,
                      timeout=30) as proxied:
        for response in (
            proxied.post("https://api.anthropic.com/v1/messages", json=anthropic_body,
                         headers={"x-api-key": user_key, "anthropic-version": "2023-06-01"}),
            proxied.post("https://api.openai.com/v1/chat/completions", json={**openai_body, "stream": True},
                         headers={"authorization": f"Bearer {user_key}"}),
            # BYOK in proxy mode: the client's own key, the gateway key as proxy password.
            proxied.post("https://api.openai.com/v1/chat/completions", json=openai_body,
                         headers={"authorization": f"Bearer {BYOK_OPENAI}"}),
        ):
            assert response.status_code == 200, response.text
    # The upstream saw the organisation's keys and the BYOK keys, never a gateway key.
    seen = json.dumps([s.headers for s in fake.requests]) + " ".join(s.path for s in fake.requests)
    for secret in (ANTHROPIC_KEY, OPENAI_KEY, BYOK_ANTHROPIC, BYOK_OPENAI):
        assert secret in seen
    assert user_key not in seen and user_key[-40:] not in seen
    # The gateway key in the query string alone is refused (query-string credentials are not accepted).
    assert httpx.post(f"{base}/anthropic/v1/messages", params={"key": user_key}, json=anthropic_body,
                      headers={"anthropic-version": "2023-06-01"}, trust_env=False).status_code == 401
