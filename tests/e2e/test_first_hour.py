"""The first hour with aigw, run as a new user would: the CLI from directories other than the one the
gateway started in, the gateway on a non-default port and in the background (`aigw serve --detach`), a
misspelled variable in the environment, and the exact one-line messages each mistake gets.

The per-user state directory is a temporary `XDG_STATE_HOME`, so nothing here touches the real one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest

from addons import __version__
from addons.cli.common import round_cost
from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import ANTHROPIC_PROVIDER_KEY, clean_env, free_port

pytestmark = pytest.mark.e2e

TYPO = "CODER_AIBRIDGE_ANTROPIC_KEY"
TYPO_WARNING = f"{TYPO}: unknown variable, ignored (did you mean CODER_AIBRIDGE_ANTHROPIC_KEY?)"
PRICES = """overrides:
  - provider: anthropic
    model: acme-priced-1
    input: 0.1
    output: 0.7
    cache_read: 0.01
    cache_write: 0.3
"""


def aigw(*args: str, env: dict[str, str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """The CLI as `python -m addons` (the same entry point as the `aigw` console script)."""
    return subprocess.run([sys.executable, "-m", "addons", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@dataclass
class User:
    env: dict[str, str]
    home: Path  # $XDG_STATE_HOME/aigw: where the state goes when no directory holds any
    start_dir: Path  # where `aigw serve --detach` ran
    other_dir: Path  # where the user runs the CLI later
    port: int
    metrics_port: int
    pid: int
    prices: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, cwd: Path | None = None, typo: bool = True,
            **extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.env.items() if typo or k != TYPO}
        return aigw(*args, env={**env, **extra}, cwd=cwd or self.other_dir)

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def user(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    root = tmp_path_factory.mktemp("first-hour")
    start_dir, other_dir = root / "clone", root / "elsewhere"
    start_dir.mkdir()
    other_dir.mkdir()
    prices = root / "my-prices.yaml"
    prices.write_text(PRICES)
    port, metrics_port = free_port(), free_port()
    env = clean_env(**{
        "XDG_STATE_HOME": str(root / "state"),
        "CODER_AIBRIDGE_ANTHROPIC_KEY": ANTHROPIC_PROVIDER_KEY,
        "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": upstream.url,
        TYPO: "sk-ant-typo",
        "CODER_AIBRIDGE_PRICES_FILE": str(prices),
        "CODER_PROMETHEUS_ENABLE": "true",
        "CODER_PROMETHEUS_ADDRESS": f"127.0.0.1:{metrics_port}",
    })
    started = aigw("serve", "--detach", "--aibridge-listen", f"127.0.0.1:{port}", env=env, cwd=start_dir)
    assert started.returncode == 0, started.stderr
    assert started.stderr == f"aigw: warning: {TYPO_WARNING}\n"  # where the user looks, not only in aigw.log
    home = root / "state" / "aigw"
    match = re.fullmatch(rf"aigw: gateway running at http://127\.0\.0\.1:{port} \(pid (\d+)\); "
                         rf"log: {re.escape(str(home / 'aigw.log'))}; stop: aigw stop\n", started.stdout)
    assert match, started.stdout
    u = User(env, home, start_dir, other_dir, port, metrics_port, int(match[1]), prices)
    yield u
    stopped = aigw("stop", env=env, cwd=other_dir)
    assert stopped.returncode == 0, stopped.stderr


def client(u: User, key: str, base: str = "/api/v2/aibridge/anthropic") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=u.url + base, api_key=key, max_retries=0)  # NO_PROXY=* (clean_env)


def latest(u: User) -> dict[str, object]:
    return json.loads(u.ok("interceptions", "list", "--json", "--limit", "1"))["interceptions"][0]


def recorded(u: User, model: str) -> dict[str, object]:
    """The newest interception once it is the one just made and has ended: records are written in batches."""
    deadline = time.monotonic() + 20
    while True:
        rows = json.loads(u.ok("interceptions", "list", "--json", "--limit", "1"))["interceptions"]
        if rows and rows[0]["model"] == model and rows[0].get("ended_at"):
            return rows[0]
        assert time.monotonic() < deadline, f"the {model} request was not recorded: {rows}"
        time.sleep(0.2)


def test_the_cli_in_another_directory_uses_the_gateways_home(user: User) -> None:
    key = json.loads(user.ok("keys", "create", "--user", "alice", "--json"))["key"]
    # The key the CLI made is the running gateway's: a request with it goes through.
    reply = client(user, key).messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                              messages=[{"role": "user", "content": "first request…"}])
    assert reply.content[0].type == "text"
    recorded(user, "claude-sonnet-4-5")
    listing = user.ok("interceptions", "list")
    assert "alice" in listing and "claude-sonnet-4-5" in listing
    # `interceptions show` takes the start of an id, as people copy it from the list.
    iid = str(latest(user)["id"])
    shown = user.ok("interceptions", "show", iid[:8])
    assert json.loads(shown)["id"] == iid
    assert "first request…" in shown and "\\u2026" not in shown  # readable JSON
    assert "alice" in user.ok("keys", "list")
    assert not any(user.other_dir.iterdir()), "the CLI created files in the directory it ran from"
    assert not any(user.start_dir.iterdir())


def test_config_check_says_which_home_and_warns_about_typos(user: User) -> None:
    out = user.ok("config", "check")
    lines = out.splitlines()
    assert f"warning: {TYPO_WARNING}" in lines
    assert (f"home: {user.home} (the per-user state directory, as the current directory holds no aigw state)"
            in lines)
    assert f"database: {user.home / 'data' / 'aibridge.duckdb'} (in the home; exists)" in lines
    assert f"CA: {user.home / 'certs' / 'mitmproxy-ca-cert.pem'} (exists)" in lines
    assert f"prices: {user.prices}" in lines
    assert f"gateway: running at {user.url} (pid {user.pid})" in lines
    [instance] = [json.loads(line) for line in lines if line.startswith("{")]
    assert instance["name"] == "anthropic" and "…" in json.dumps(instance, ensure_ascii=False)
    assert "\\u2026" not in out and "…" in out
    assert "warning: --aibridge-otel-propagate-upstream" not in out
    propagate = user.cli("config", "check", "--aibridge-otel-propagate-upstream", typo=False).stdout.splitlines()
    assert propagate[1] == ("warning: --aibridge-otel-propagate-upstream does nothing: OpenTelemetry export is off "
                            "(turn it on with --aibridge-otel or OTEL_EXPORTER_OTLP_ENDPOINT)")
    # Other commands warn on stderr; the gateway warned once at start, in its log.
    assert user.cli("keys", "list").stderr == f"aigw: warning: {TYPO_WARNING}\n"
    assert f"WARN  aigw: {TYPO_WARNING}" in (user.home / "aigw.log").read_text()


def test_env_prints_the_running_address_and_writes_a_bundle_only_when_asked(user: User) -> None:
    out = user.ok("env")
    assert f"export HTTPS_PROXY='http://aigw:<gateway-key>@127.0.0.1:{user.port}'\n" in out
    assert f"export NODE_EXTRA_CA_CERTS={user.home / 'certs' / 'mitmproxy-ca-cert.pem'}" in out
    assert "export SSL_CERT_FILE" not in out and "aigw env --bundle FILE" in out
    assert sorted(p.name for p in (user.home / "certs").iterdir() if "bundle" in p.name) == []
    bundle = user.other_dir.parent / "bundle.pem"
    result = user.cli("env", "--bundle", str(bundle))
    assert f"export SSL_CERT_FILE={bundle}   #" in result.stdout
    assert f"export REQUESTS_CA_BUNDLE={bundle}\n" in result.stdout
    assert re.search(rf"aigw: wrote {re.escape(str(bundle))}: \d+ certificates", result.stderr)
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 20


def test_errors_name_the_fix(user: User) -> None:
    def message(path: str, **headers: str) -> tuple[int, str]:
        r = httpx.post(user.url + path, json={"model": "m", "max_tokens": 1, "messages": []}, headers=headers,
                       trust_env=False)
        return r.status_code, r.json()["error"]["message"]

    assert message("/api/v2/aibridge/antropic/v1/messages") == (
        404, "unknown provider instance 'antropic' (instances here: anthropic)")
    assert message("/v1/messages") == (
        404, "no route for POST /v1/messages: the client's base URL must include /api/v2/aibridge/<instance> "
             "(instances here: anthropic)")
    assert message("/api/v2/aibridge/anthropic/v1/messages", **{"x-api-key": "sk-ant-api03-" + "x" * 40}) == (
        401, "this is a provider key, not a gateway key: send your gateway key instead, or keep your own key "
             "and send the gateway key in X-Aigw-Token (bring-your-own-key)")
    # What an SDK user sees with a base URL that lacks the gateway prefix.
    with pytest.raises(anthropic.NotFoundError, match=r"base URL must include /api/v2/aibridge/<instance>"):
        client(user, "aigw_x", base="").messages.create(model="m", max_tokens=1,
                                                        messages=[{"role": "user", "content": "hi"}])


def test_startup_mistakes_are_one_line(user: User, tmp_path: Path) -> None:
    other_home = {"CODER_AIBRIDGE_HOME": str(tmp_path / "home"), "CODER_PROMETHEUS_ENABLE": "false", "typo": False}
    busy = user.cli("serve", "--aibridge-listen", f"127.0.0.1:{user.port}", **other_home)
    assert one_line(busy) == (f"aigw: cannot listen on 127.0.0.1:{user.port}: address already in use "
                              "(another gateway? stop it with aigw stop, or pick another --aibridge-listen)")
    free = f"127.0.0.1:{free_port()}"
    loud = user.cli("serve", "--aibridge-listen", free, "--set", "termlog_verbosity=LOUD", **other_home)
    assert one_line(loud) == ("aigw: --set termlog_verbosity=LOUD: invalid value 'LOUD' for termlog_verbosity "
                              "(expected one of error, warn, info, alert, debug)")
    grace = user.cli("serve", "--aibridge-listen", free, "--set", "aigw_shutdown_grace=soon", **other_home)
    assert one_line(grace) == ("aigw: aigw_shutdown_grace: invalid duration 'soon' "
                               "(use e.g. 90d, 720h, 30m, 45s or 1h30m)")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = user.cli("serve", "--aibridge-listen", free, **{**other_home, "CODER_AIBRIDGE_HOME": str(blocker)})
    assert one_line(unwritable) == (f"aigw: cannot open the database {blocker / 'data' / 'aibridge.duckdb'}: "
                                    f"Not a directory (home {blocker}: set by CODER_AIBRIDGE_HOME)")
    expires = user.cli("keys", "create", "--user", "bob", "--expires", "90days", typo=False)
    assert one_line(expires) == (
        "aigw: --expires: invalid duration '90days' (use e.g. 90d, 720h, 30m, 45s or 1h30m; 0 never expires)")


def test_prices_come_from_the_prices_file_and_missing_ones_say_how_to_add_them(user: User) -> None:
    key = json.loads(user.ok("keys", "create", "--user", "carol", "--json"))["key"]
    for model in ("acme-priced-1", "acme-unpriced-1"):
        client(user, key).messages.create(model=model, max_tokens=20, messages=[{"role": "user", "content": "x"}])
    shown = json.loads(user.ok("interceptions", "show", str(recorded(user, "acme-unpriced-1")["id"])))
    assert shown["model"] == "acme-unpriced-1"
    missing = user.ok("prices", "missing").splitlines()
    assert any("acme-unpriced-1" in line for line in missing)
    assert missing[-1] == (
        "To price a model, add an entry such as `- {provider: anthropic, model: acme-unpriced-1, input: 3.00, "
        f"output: 15.00}}` (USD per 1M tokens) to {user.prices}, then restart the gateway.")
    rows = json.loads(user.ok("query", "SELECT i.model, t.cost_usd FROM aibridge_token_usages t JOIN "
                              "aibridge_interceptions i ON i.id = t.interception_id WHERE i.model = 'acme-priced-1'",
                              "--format", "json"))
    # 25 input, 12 output, 100 cache-read, 7 cache-write tokens (the fake's usage) at the file's prices.
    expected = (25 * 0.1 + 12 * 0.7 + 100 * 0.01 + 7 * 0.3) / 1e6
    assert rows == [{"model": "acme-priced-1", "cost_usd": round_cost(expected)}]


def test_every_metric_the_dashboard_queries_exists(user: User) -> None:
    dashboard = (Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "aigw-dashboard.json").read_text()
    queried = set(re.findall(r"coder_aibridged_[a-z_]+", dashboard))
    exposed = httpx.get(f"http://127.0.0.1:{user.metrics_port}/metrics", trust_env=False).text
    names = set(re.findall(r"^# TYPE (coder_aibridged_\w+) ", exposed, re.MULTILINE))
    suffixes = ("_bucket", "_sum", "_count")
    missing = {q for q in queried if q not in names and q.removesuffix("_total") not in names
               and not any(q.endswith(s) and q.removesuffix(s) in names for s in suffixes)}
    assert len(queried) > 15 and not missing
    assert re.search(r'^coder_aibridged_build_info\{mitmproxy_version="[\d.]+",python_version="[\d.]+",'
                     rf'version="{re.escape(__version__)}"\}} 1\.0$', exposed, re.MULTILINE)


def test_detach_runs_aigw_not_the_addons_package_of_the_current_directory_then_wait_and_stop(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    """A project with its own `addons/` package: `aigw serve --detach` from there must still start aigw
    (`python -m` would put the current directory first on sys.path). Its own gateway and home, so the
    stop does not depend on the order of the other tests."""
    project = tmp_path / "project"
    (project / "addons").mkdir(parents=True)
    pwned = tmp_path / "pwned"
    (project / "addons" / "__init__.py").write_text("")
    (project / "addons" / "__main__.py").write_text(f"open({str(pwned)!r}, 'w').write('ran')\n")
    home, port = tmp_path / "home", free_port()
    env = clean_env(CODER_AIBRIDGE_HOME=str(home), CODER_AIBRIDGE_ANTHROPIC_KEY=ANTHROPIC_PROVIDER_KEY,
                    CODER_AIBRIDGE_ANTHROPIC_BASE_URL=upstream.url)
    aigw_script = Path(sys.executable).with_name("aigw")  # the installed entry point, as a user runs it

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([aigw_script, *args], env=env, cwd=project, capture_output=True, text=True,
                              timeout=90)

    url = f"http://127.0.0.1:{port}"
    started = run("serve", "--detach", "--aibridge-listen", f"127.0.0.1:{port}",
                  "--aibridge-otel-propagate-upstream")
    try:
        assert started.returncode == 0, (started.stdout, started.stderr)
        assert started.stderr == ("aigw: warning: --aibridge-otel-propagate-upstream does nothing: OpenTelemetry "
                                  "export is off (turn it on with --aibridge-otel or OTEL_EXPORTER_OTLP_ENDPOINT)\n")
        assert not pwned.exists()
        pid = int(re.search(r"\(pid (\d+)\)", started.stdout)[1])  # type: ignore[index]
        assert run("wait").stdout == f"aigw: gateway ready at {url}\n"
        assert run("stop").stdout == f"aigw: stopped the gateway at {url} (pid {pid})\n"
    finally:
        if started.returncode == 0 and (m := re.search(r"\(pid (\d+)\)", started.stdout)):
            try:
                os.kill(int(m[1]), signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert one_line(run("wait", "--timeout", "0.5")).startswith("aigw: no gateway ready within 0.5 s")
    assert one_line(run("stop")) == (
        f"aigw: no gateway runs for {home / 'data' / 'aibridge.duckdb'} (home {home}: set by CODER_AIBRIDGE_HOME); "
        "point elsewhere with --aibridge-home DIR or CODER_AIBRIDGE_HOME=DIR")
    assert not pwned.exists()


# -- without a gateway --------------------------------------------------------------------------


READ_COMMANDS = (
    ["keys", "list"], ["keys", "revoke", "aigw_00000000"], ["keys", "create", "--user", "x"],
    ["query", "SELECT 1"], ["interceptions", "list"], ["interceptions", "show", "abc"], ["sessions", "list"],
    ["report", "--out", "r.html"], ["snapshot"], ["prices", "missing"],
)


def test_read_commands_never_create_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = clean_env(XDG_STATE_HOME=str(state))
    where = (f"(home {state / 'aigw'}: the per-user state directory, as the current directory holds no aigw "
             "state); start the gateway first (aigw serve), or point elsewhere with --aibridge-home DIR or "
             "CODER_AIBRIDGE_HOME=DIR")
    for command in READ_COMMANDS:
        assert one_line(aigw(*command, env=env, cwd=tmp_path)) == (
            f"aigw: no database at {state / 'aigw' / 'data' / 'aibridge.duckdb'} {where}"), command
    for command in (["ca"], ["env"], ["ca", "--bundle", "b.pem"]):
        assert one_line(aigw(*command, env=env, cwd=tmp_path)) == (
            f"aigw: no CA at {state / 'aigw' / 'certs' / 'mitmproxy-ca-cert.pem'} {where} "
            "(or create it now: aigw ca --init)"), command
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a read command created files"
    # An explicit --aibridge-db names the variable to fix instead.
    result = aigw("keys", "list", "--aibridge-db", "nope.duckdb", env=env, cwd=tmp_path)
    assert one_line(result) == ("aigw: no database at nope.duckdb (set by --aibridge-db); start the gateway "
                                "first (aigw serve), or fix --aibridge-db")


def test_first_key_before_the_first_start_needs_a_named_home(tmp_path: Path) -> None:
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"), CODER_AIBRIDGE_HOME=str(tmp_path / "home"))
    created = aigw("keys", "create", "--user", "root", "--admin", "--json", env=env, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "home" / "data" / "aibridge.duckdb").is_file()
    assert aigw("ca", "--init", env=env, cwd=tmp_path).stdout.strip() == str(
        tmp_path / "home" / "certs" / "mitmproxy-ca-cert.pem")
    # No gateway runs yet: `aigw env` says so and uses the configured address.
    out = aigw("env", env={**env, "CODER_AIBRIDGE_LISTEN": "127.0.0.1:18123"}, cwd=tmp_path).stdout.splitlines()
    db = tmp_path / "home" / "data" / "aibridge.duckdb"
    assert out[0] == f"# No gateway runs for {db}: this is the configured address."
    assert "export HTTPS_PROXY='http://aigw:<gateway-key>@127.0.0.1:18123'" in out
    # From a directory that now holds state, that directory is the home without being named.
    env.pop("CODER_AIBRIDGE_HOME")
    out = aigw("config", "check", env=env, cwd=tmp_path / "home").stdout
    assert f"home: {tmp_path / 'home'} (the current directory holds data/aibridge.duckdb)" in out.splitlines()


def test_keys_create_refuses_a_home_that_belongs_to_another_user(tmp_path: Path) -> None:
    """`sudo aigw keys create` while the systemd service (DynamicUser) is stopped would leave root-owned
    database files its gateway cannot open: refused, with the way that works."""
    if os.geteuid() != 0:
        pytest.skip("giving the home to another user needs root")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"), CODER_AIBRIDGE_HOME=str(home))
    result = aigw("keys", "create", "--user", "alice", "--admin", env=env, cwd=tmp_path)
    assert one_line(result) == (
        f"aigw: {home} belongs to another user (uid 65534): run this while its gateway runs (the CLI then goes "
        "through it) or as that user; files written there as uid 0 would lock it out")
    assert list(home.iterdir()) == []


def test_version_and_python_m_addons(tmp_path: Path) -> None:
    result = aigw("--version", env=clean_env(), cwd=tmp_path)
    assert result.stdout == f"aigw {__version__}\n" and __version__ != "0+unknown"


# -- packaging and deployment files -----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_a_wheel_install_ships_the_default_prices(tmp_path: Path) -> None:
    """Build a real wheel and install it (not editable) into a fresh virtualenv whose dependencies come
    from the test virtualenv, then use it from a directory outside the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-rL", str(REPO / "addons"), str(src)], check=True)
    # The build backend directly (setuptools is a pinned test dependency), offline.
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_wheel(sys.argv[1]))", str(tmp_path / "dist")],
                           cwd=src, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    wheel = tmp_path / "dist" / built.stdout.split()[-1]
    venv = tmp_path / "venv"
    subprocess.run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=60)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "--quiet", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    # Dependencies from the test virtualenv; aigw itself only from the wheel (a .pth line adds a plain path,
    # so the test virtualenv's editable-install hook is not loaded).
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "mitmproxy").is_dir())
    (site / "test-deps.pth").write_text(f"{deps}\n")
    run_dir = tmp_path / "somewhere"
    run_dir.mkdir()
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"))
    version = subprocess.run([venv / "bin" / "aigw", "--version"], env=env, cwd=run_dir, capture_output=True,
                             text=True, timeout=60)
    assert version.stdout == f"aigw {__version__}\n", version.stderr
    check = subprocess.run([venv / "bin" / "python", "-m", "addons", "config", "check"], env=env, cwd=run_dir,
                           capture_output=True, text=True, timeout=60)
    assert f"prices: {site / 'addons' / 'prices.yaml'}" in check.stdout.splitlines(), check.stderr
    rates = subprocess.run(
        [venv / "bin" / "python", "-c", "import addons, sys; from addons.pricing.pricer import Pricer; "
         "assert addons.__file__.startswith(sys.argv[1]), addons.__file__; "
         "print(Pricer().rates('openai', 'acme-coder-7').source)", str(site)],
        env=env, cwd=run_dir, capture_output=True, text=True, timeout=60)
    assert rates.stdout == "override:openai/acme-coder-*\n", rates.stderr


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify also checks that ExecStart exists: point it at an executable this machine has.
    unit = (REPO / "deploy" / "systemd" / "aigw.service").read_text()
    assert "ExecStart=/opt/aigw/bin/aigw serve" in unit and "DynamicUser=yes" in unit
    (tmp_path / "aigw.service").write_text(unit.replace("/opt/aigw/bin/aigw", sys.executable + " -m addons"))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "aigw.service")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "aigw.service" not in result.stderr, result.stderr


def test_the_docker_image_builds_and_becomes_healthy(tmp_path: Path) -> None:
    import shutil

    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker daemon is reachable (docker info fails)")
    tag = f"aigw-test:{os.getpid()}"
    subprocess.run(["docker", "build", "-q", "-f", "deploy/Dockerfile", "-t", tag, "."], cwd=REPO, check=True,
                   timeout=1200)
    name = f"aigw-test-{os.getpid()}"
    subprocess.run(["docker", "run", "-d", "--name", name, tag], check=True, timeout=60)
    try:
        waited = subprocess.run(["docker", "exec", name, "aigw", "wait", "--timeout", "60"], capture_output=True,
                                text=True, timeout=90)
        assert waited.stdout == "aigw: gateway ready at http://127.0.0.1:8888\n", waited.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


def test_compose_and_dockerfile_agree_on_the_home() -> None:
    import yaml

    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    home = re.search(r'^VOLUME \["([^"]+)"\]', dockerfile, re.MULTILINE)
    assert home and f"CODER_AIBRIDGE_HOME={home[1]}" in dockerfile
    assert re.search(r"^USER aigw$", dockerfile, re.MULTILINE) and "HEALTHCHECK" in dockerfile
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    gateway, postgres = compose["services"]["aigw"], compose["services"]["postgres"]
    assert gateway["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert any(v.endswith(f":{home[1]}") for v in gateway["volumes"])
    assert postgres["profiles"] == ["postgres"] and "profiles" not in gateway
