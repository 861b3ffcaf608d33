"""Admin SQL is sandboxed: no host files, network, extensions or settings, whichever way it is run.

Through the query endpoint (admin key), `aigw query` via the running gateway, and `aigw query` on
the database file when no gateway runs; and, below the statement-type check, on the locked-down
connection itself. Every documented table and view stays queryable.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from mitmproxy.test import tflow

from addons.chain import admin as admin_module
from addons.chain.admin import AdminApi
from addons.chain.auth import KeyCache
from addons.settings.config import Settings
from addons.sinks.recorder import Recorder
from addons.store import db
from addons.store.query import QueryError, QueryResult, run_query
from tests.gateway_process import REPO, Gateway

pytestmark = pytest.mark.e2e

QUERY = "/api/v2/aibridge/query"
MARKER = "canary-file-content-8c1f"  # in a host file the attacks try to read


class Canary:
    """A TCP listener that counts every byte anyone sends it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    while chunk := conn.recv(65536):
                        self.received += len(chunk)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


@pytest.fixture(scope="module")
def host_files(gateway: Gateway) -> dict[str, str]:
    """Paths of files an attacker wants: the CA private key, the local admin token, a planted secret."""
    planted = gateway.workdir / "planted-secret.txt"
    planted.write_text(MARKER)
    ca = next(gateway.workdir.rglob("mitmproxy-ca.pem"))
    return {
        "ca": str(ca),
        "ca_rel": str(ca.relative_to(gateway.workdir)),  # relative to the gateway's working directory
        "token": str(gateway.db.parent / "aibridge.gateway.json"),
        "planted": str(planted),
        "planted_rel": planted.name,
        "snapshot_escape": str(gateway.db.parent / "snapshot" / ".." / ".." / planted.name),
        "out": str(gateway.workdir / "written-by-sql.csv"),
        "other": str(gateway.workdir / "other.duckdb"),
    }


ATTACKS = [
    "select content from read_text('{ca}')",
    "select content from read_text('{ca_rel}')",
    "select content from read_text('{token}')",
    "select content from read_text('/etc/passwd')",
    "select content from read_text('{planted}')",
    "select content from read_text('{planted_rel}')",
    "select content from read_text('{snapshot_escape}')",
    "select * from read_csv('{planted}')",
    "select * from read_csv_auto('/etc/passwd')",
    "select * from read_parquet('{ca}')",
    "select * from read_json_auto('{token}')",
    "select * from read_blob('{token}')",
    "select * from glob('{planted}')",
    "select * from sniff_csv('{planted}')",
    "select * from parquet_metadata('{ca}')",
    "select content from read_text('http://127.0.0.1:{canary}/x')",
    "with t as (select content from read_text('{token}')) select * from t",
    "explain analyze select content from read_text('{planted}')",
    "copy (select 1) to '{out}'",
    "explain analyze copy (select 1) to '{out}'",
    "export database '{out}.d'",
    "attach '{other}' as other",
    "install httpfs",
    "load httpfs",
    "set enable_external_access = true",
    "set lock_configuration = false",
    "reset enable_external_access",
    "pragma threads = 1",
    "call read_text('{planted}')",
    "call glob('/etc/*')",
    "select 1; select content from read_text('{planted}')",
]
# Writes the statement-type check alone would let through (EXPLAIN runs its statement).
WRITES = [
    "explain analyze delete from api_keys",
    "explain analyze update api_keys set admin = true",
    "explain analyze insert into users values (gen_random_uuid(), 'mallory', now())",
]


def query(gw: Gateway, sql: str) -> httpx.Response:
    return httpx.post(gw.url + QUERY, json={"sql": sql}, timeout=30, trust_env=False,
                      headers={"authorization": f"Bearer {gw.admin_key}"})  # type: ignore[attr-defined]


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_query_endpoint_refuses_host_access(gateway: Gateway, host_files: dict[str, str],
                                                canary: Canary, attack: str) -> None:
    sql = attack.format(**host_files, canary=canary.port)
    response = query(gateway, sql)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert MARKER not in response.text and "PRIVATE KEY" not in response.text
    assert "root:" not in response.text and gateway.admin_token() not in response.text
    assert not Path(host_files["out"]).exists() and not Path(host_files["out"] + ".d").exists()
    assert not Path(host_files["other"]).exists()
    assert canary.connections == 0 and canary.received == 0


@pytest.mark.parametrize("attack", WRITES)
def test_explain_analyze_cannot_write(gateway: Gateway, attack: str) -> None:
    before = query(gateway, "select count(*), count(*) filter (where admin) from api_keys").json()["rows"]
    response = query(gateway, attack)
    assert response.status_code == 400, response.text
    assert "read-only" in response.json()["error"]["message"]
    assert query(gateway, "select count(*), count(*) filter (where admin) from api_keys").json()["rows"] == before
    assert query(gateway, "select count(*) from users where name = 'mallory'").json()["rows"] == [[0]]


def documented_relations() -> dict[str, bool]:
    """Each table and view docs/SCHEMA.md documents, and whether it says the relation may be absent."""
    sections = re.split(r"^### `([a-z_]+)`", (REPO / "docs" / "SCHEMA.md").read_text(), flags=re.MULTILINE)
    names = dict(zip(sections[1::2], ("absent" in text for text in sections[2::2]), strict=True))
    assert len(names) >= 10, "docs/SCHEMA.md lists the tables and views under ### `name` headings"
    return names


def test_every_documented_table_and_view_stays_queryable(gateway: Gateway) -> None:
    existing = {row[0] for row in query(gateway, "select table_name from duckdb_tables() union all "
                                                 "select view_name from duckdb_views() where not internal"
                                        ).json()["rows"]}
    for name, may_be_absent in documented_relations().items():
        if name not in existing and may_be_absent:
            continue
        response = query(gateway, f"select * from {name} limit 1")
        assert response.status_code == 200, f"{name}: {response.text}"


def test_snapshots_still_work_on_the_locked_down_database(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + "/api/v2/aibridge/admin/snapshot", timeout=60, trust_env=False,
                          headers={"authorization": f"Bearer {gateway.admin_key}"})  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    snapshot = Path(response.json()["snapshot"])
    assert snapshot.exists() and (snapshot.parent / "parquet" / "api_keys").is_dir()


@pytest.mark.parametrize(("sql", "expected"), [
    ("select interval 1 day", "P1D"),
    ("select interval 90 minute", "PT1H30M"),
    ("select - interval 1 second", "-PT1S"),
    ("select [interval 2 hour]", ["PT2H"]),
    ("select {'d': interval 1 day}", {"d": "P1D"}),
    ("select map {1: 'a'}", {"1": "a"}),
    ("select 170141183460469231731687303715884105727::hugeint", "170141183460469231731687303715884105727"),
    ("select 1.5::decimal(10, 2)", 1.5),
    ("select '\\x01'::blob", "01"),
])
def test_results_of_every_type_serialise(gateway: Gateway, sql: str, expected: object) -> None:
    response = query(gateway, sql)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[expected]]


def test_aigw_query_of_an_interval_through_the_gateway(gateway: Gateway) -> None:
    result = gateway.cli("query", "select interval 1 day as d", "--format", "json")
    assert json.loads(result.stdout) == [{"d": "P1D"}]


def test_aigw_query_through_the_gateway_refuses_host_access(gateway: Gateway, host_files: dict[str, str]) -> None:
    result = gateway.cli("query", f"select content from read_text('{host_files['token']}')", check=False)
    assert result.returncode != 0
    assert "disabled by configuration" in result.stderr
    assert gateway.admin_token() not in result.stdout + result.stderr


def test_aigw_query_on_the_file_refuses_host_access(gateway: Gateway, host_files: dict[str, str]) -> None:
    gateway.stop()
    try:
        for attack in ("select content from read_text('{planted}')", "select * from read_csv('/etc/passwd')",
                       "explain analyze delete from api_keys", "attach '{other}' as other"):
            result = gateway.cli("query", attack.format(**host_files), check=False)
            assert result.returncode != 0, result.stdout
            assert MARKER not in result.stdout + result.stderr and "root:" not in result.stdout
        assert not Path(host_files["other"]).exists()
        ok = gateway.cli("query", "select count(*) as n from api_keys", "--format", "json")
        assert '"n": 2' in ok.stdout
    finally:
        gateway.start()


# --------------------------------------------------------------------------- the sandbox layer on its own


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    (tmp_path / "secret.txt").write_text(MARKER)
    conn = db.connect(tmp_path / "data" / "aibridge.duckdb")
    db.lock_down(conn, [tmp_path / "data" / "snapshot"])
    yield conn
    conn.close()


@pytest.mark.parametrize("sql", [
    "select content from read_text('{tmp}/secret.txt')",
    "select content from read_text('{tmp}/data/snapshot/../../secret.txt')",
    "copy (select 1) to '{tmp}/out.csv'",
    "attach '{tmp}/other.duckdb' as other",
    "install httpfs",
    "load httpfs",
    "set enable_external_access = true",
    "set lock_configuration = false",
    "set allowed_directories = ['/']",
    "pragma threads = 1",
    "call read_text('{tmp}/secret.txt')",
])
def test_the_locked_down_database_refuses_below_the_statement_check(locked: duckdb.DuckDBPyConnection,
                                                                    tmp_path: Path, sql: str) -> None:
    # Straight on a cursor: this layer holds even where the statement-type check would not.
    with pytest.raises((duckdb.PermissionException, duckdb.InvalidInputException)):
        locked.cursor().execute(sql.format(tmp=tmp_path)).fetchall()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_a_read_only_connection_is_sandboxed_too(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(MARKER)
    db.connect(tmp_path / "a.duckdb").close()
    conn = db.connect(tmp_path / "a.duckdb", read_only=True)
    try:
        with pytest.raises(QueryError, match="disabled by configuration"):
            run_query(conn, f"select content from read_text('{tmp_path}/secret.txt')")
        assert run_query(conn, "select count(*) from api_keys").rows == [[0]]
    finally:
        conn.close()


# --------------------------------------------------------------------------- the handler always answers JSON


@pytest.mark.parametrize("failure", ["unserialisable", "raises"])
def test_a_failing_query_handler_answers_json_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     failure: str) -> None:
    recorder = Recorder(Settings(db=tmp_path / "data" / "aibridge.duckdb"))
    recorder.open()
    keys = KeyCache({})
    api = AdminApi(recorder.settings, recorder, keys)

    def broken(conn: object, sql: str) -> QueryResult:
        if failure == "raises":
            raise RuntimeError("boom")
        return QueryResult(["x"], [[object()]])

    monkeypatch.setattr(admin_module, "run_query", broken)
    flow = tflow.tflow()
    flow.request.method, flow.request.path = "POST", "/api/v2/aibridge/query"
    flow.request.headers["authorization"] = f"Bearer {keys.admin_token}"
    flow.request.content = b'{"sql": "select 1"}'
    try:
        asyncio.run(api.request(flow))
    finally:
        recorder.done()
    assert flow.response is not None and flow.response.status_code == 500
    assert flow.response.headers["content-type"] == "application/json"
    assert json.loads(flow.response.content)["error"] == {"type": "api_error", "message": "internal error",
                                                          "code": None}


@pytest.fixture(scope="module")
def small_memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.gateway_process import clean_env

    gw = Gateway(tmp_path_factory.mktemp("small-memory"), clean_env(CODER_AIBRIDGE_ANALYTICS_MEMORY_LIMIT="128MiB"))
    gw.admin_key = gw.create_key("root", admin=True)  # type: ignore[attr-defined]
    gw.start()
    yield gw
    gw.stop()


def test_an_admin_query_cannot_take_the_hosts_memory(small_memory: Gateway) -> None:
    """The query endpoint shares the writer's DuckDB instance: it is bounded (analytics memory limit), so
    a huge result is DuckDB's out-of-memory error, not a gateway killed by the kernel."""
    # A 1 GB string: DuckDB's default limit (80% of RAM) would let it through on most hosts.
    response = query(small_memory, "select string_agg(repeat('x', 1000000), '') as s from range(1000)")
    assert response.status_code == 400, response.text[:200]
    assert "out of memory" in response.json()["error"]["message"].lower()
    settings = query(small_memory, "select current_setting('memory_limit') as m, "
                                   "current_setting('autoload_known_extensions') as autoload, "
                                   "current_setting('autoinstall_known_extensions') as autoinstall")
    assert settings.status_code == 200, settings.text
    assert settings.json()["rows"][0][1:] == [False, False]
    assert httpx.get(small_memory.url + "/healthz", trust_env=False).status_code == 200
    assert small_memory.query("select count(*) as n from aibridge_interceptions") == [{"n": 0}]
