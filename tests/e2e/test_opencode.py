"""The real opencode CLI (`opencode-ai` 1.18.33, pinned in tests/clients) through the gateway, in both modes.

`opencode run PROMPT` answers one prompt headless. It stays offline with
`OPENCODE_DISABLE_MODELS_FETCH=1` (its bundled model list knows `claude-sonnet-4-5` and
`gpt-5.3-codex`) and `OPENCODE_DISABLE_AUTOUPDATE=1`; its config comes from the file named by
`OPENCODE_CONFIG`, and HOME / XDG dirs are a temp dir. With the anthropic provider it speaks
Messages, with the openai provider Responses; each run is a title request on the provider's
small model, then the fake upstream's tool call (rejected by opencode) and its text answer.

Base-URL mode: the provider's `baseURL` is the gateway route (Anthropic's includes `/v1`) and
`apiKey` the gateway key. Proxy mode: no baseURL, `HTTPS_PROXY=http://aigw:<key>@…` and the
gateway CA in `NODE_EXTRA_CA_CERTS`, which opencode's Bun runtime honours like Node does (so
does `SSL_CERT_FILE` with the `aigw ca --bundle` file; with neither, opencode stops at
"unable to verify the first certificate").

Every call is recorded as client `OpenCode` with `client_version` 1.18.33 in its metadata, and
the whole run is one session: opencode's own session id (`x-session-affinity`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_real_clients import PROMPT, Run, binary, known_ids, new_interceptions, run_cli
from tests.e2e.test_real_clients_proxy import (  # noqa: F401 - the cli_* fixtures: the proxy-mode gateway
    cli_fake,
    cli_gateway,
    cli_pki,
    gateway_ca,
    key,
    never_leaks,
    run_proxied,
)
from tests.fakes.cli_upstream import CliFakeUpstream
from tests.fakes.upstream import ANSWER, FakeUpstream, Seen
from tests.gateway_process import (
    ANTHROPIC_PROVIDER_KEY,
    OPENAI_PROVIDER_KEY,
    Gateway,
)

pytestmark = pytest.mark.e2e

VERSION = "1.18.33"
P = "CODER_AIBRIDGE_PROVIDER_"
# provider → (model, the API path its calls take upstream, the provider key the gateway injects)
PROVIDERS = {
    "anthropic": ("claude-sonnet-4-5", "/v1/messages", ANTHROPIC_PROVIDER_KEY),
    "openai": ("gpt-5.3-codex", "/v1/responses", OPENAI_PROVIDER_KEY),
}
OFFLINE = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1"}


def opencode_env(home: Path, provider: str, options: dict[str, str]) -> dict[str, str]:
    config = home / "opencode.json"
    home.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"provider": {provider: {"options": options}},
                                  "model": f"{provider}/{PROVIDERS[provider][0]}"}))
    return {**OFFLINE, "OPENCODE_CONFIG": str(config)}


def llm_calls(requests: list[Seen], provider: str) -> list[Seen]:
    path = PROVIDERS[provider][1]
    return [s for s in requests if s.method == "POST" and s.path.partition("?")[0] == path]


def check_run(gw: Gateway, run: Run, calls: list[Seen], before: set[str], provider: str, mode: str,
              detail: str) -> None:
    assert run.returncode == 0, detail
    assert ANSWER in run.stdout, detail
    assert len(calls) >= 2, detail  # (title request,) tool call, answer
    _, _, provider_key = PROVIDERS[provider]
    session = calls[0].headers["x-session-affinity"]
    assert session.startswith("ses_")
    for seen in calls:  # what opencode sent, forwarded: its identity and session; the provider key
        assert seen.headers["user-agent"].startswith(f"opencode/{VERSION} "), seen.headers
        assert seen.headers["x-session-affinity"] == session
        assert provider_key in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "")[7:])

    rows = new_interceptions(gw, before, len(calls))
    assert len(rows) == len(calls), rows
    for row in rows:
        assert (row["client"], row["client_session_id"], row["provider_name"], row["status"]) == (
            "OpenCode", session, provider, "completed"), row
        metadata = json.loads(row["metadata"])
        assert (metadata["client_version"], metadata["mode"]) == (VERSION, mode), metadata
    assert PROVIDERS[provider][0] in {row["model"] for row in rows}

    # `aigw sessions list` groups the run as opencode does: one client session.
    listed = json.loads(gw.cli("sessions", "list", "--client", "OpenCode", "--json").stdout)
    ours = [s for s in listed if s["session_id"] == session]
    assert len(ours) == 1, listed
    assert (ours[0]["session_kind"], ours[0]["client"], ours[0]["interceptions"]) == ("client", "OpenCode",
                                                                                       len(rows)), ours


# -- base-URL mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_opencode_base_url(gateway: Gateway, upstream: FakeUpstream, tmp_path: Path, provider: str) -> None:
    opencode = binary("opencode")
    user_key = gateway.user_key  # type: ignore[attr-defined]
    env = opencode_env(tmp_path, provider, {"baseURL": f"{gateway.url}/api/v2/aibridge/{provider}/v1",
                                            "apiKey": user_key})
    before = known_ids(gateway)
    run = run_cli([opencode, "run", PROMPT], tmp_path, env, timeout=120)
    calls = llm_calls(upstream.requests, provider)
    detail = f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    check_run(gateway, run, calls, before, provider, "gateway", detail)
    for seen in upstream.requests:
        assert user_key not in json.dumps(seen.headers) and user_key not in seen.body.decode(errors="replace")


# -- proxy mode ------------------------------------------------------------------------------------


# The proxy-mode gateway, its fake provider hosts and their PKI are the real-client proxy tests' own.


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_opencode_through_the_proxy(gw: Gateway, fake: CliFakeUpstream, tmp_path: Path, provider: str) -> None:
    """opencode's own provider hosts (api.anthropic.com, api.openai.com) through the gateway as its proxy."""
    opencode = binary("opencode")
    fake.reset()
    env = {**opencode_env(tmp_path, provider, {"apiKey": key(gw)}), "NODE_EXTRA_CA_CERTS": str(gateway_ca(gw))}
    before = known_ids(gw)
    run = run_proxied([opencode, "run", PROMPT], tmp_path, gw, env)
    calls = llm_calls(fake.requests, provider)
    detail = (f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
                   f"\ngateway log:\n{gw.output()[-3000:]}")
    check_run(gw, run, calls, before, provider, "proxy", detail)
    never_leaks(key(gw), fake)
