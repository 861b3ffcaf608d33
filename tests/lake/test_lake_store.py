"""The lake's store functions on a real PostgreSQL: leases, concurrent writers, upkeep, settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from addons.settings import loader
from addons.settings.config import LakeSettings
from addons.settings.values import ConfigError
from addons.store import keys as keystore
from addons.store import lake
from addons.store.governance import load_policy, set_user
from tests.lake.conftest import Postgres


@pytest.fixture
def lake_settings(postgres: Postgres, tmp_path: Path) -> LakeSettings:
    return LakeSettings(postgres.create_db(), str(tmp_path / "data"))


def test_settings_name_a_lake_with_its_data_path() -> None:
    env = {"CODER_AIBRIDGE_DB": "ducklake:postgres:dbname=aigw host=/run/pg password=hunter2",
           "CODER_AIBRIDGE_DATA_PATH": "s3://b/p/", "CODER_AIBRIDGE_S3_ENDPOINT": "http://minio:9000",
           "CODER_AIBRIDGE_HOME": "/tmp/aigw-home"}
    s = loader.load(None, env)
    assert s.lake == LakeSettings(env["CODER_AIBRIDGE_DB"], "s3://b/p/", "http://minio:9000")
    assert s.db == Path("/tmp/aigw-home/data/aibridge.duckdb")  # local state (spool, runtime) stays in the home
    assert "hunter2" not in repr(s) and "hunter2" not in lake.describe(s.lake)
    with pytest.raises(ConfigError, match="CODER_AIBRIDGE_DATA_PATH"):
        loader.load(None, {"CODER_AIBRIDGE_DB": "ducklake:postgres:dbname=aigw"})
    with pytest.raises(ConfigError, match="PostgreSQL"):
        loader.load(None, {"CODER_AIBRIDGE_DB": "ducklake:sqlite:x.db", "CODER_AIBRIDGE_DATA_PATH": "/d"})
    with pytest.raises(ConfigError, match="only for a DuckLake"):
        loader.load(None, {"CODER_AIBRIDGE_DATA_PATH": "/d"})
    assert loader.load(None, {}).lake is None


def test_attach_errors_never_show_the_password(postgres: Postgres, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = (f"ducklake:postgres:dbname=nosuchdb host={postgres.socket_dir} port={postgres.port} "
               f"user={postgres.user} password=hunter2")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(lake.LakeError) as err:
        lake.connect(LakeSettings(catalog, str(tmp_path)))
    assert "hunter2" not in str(err.value) and "nosuchdb" in str(err.value)
    assert os.environ.pop("PGPASSWORD") == "hunter2"  # handed to libpq, out of every connection string


def test_one_lease_holder_at_a_time(lake_settings: LakeSettings) -> None:
    conn = lake.connect(lake_settings)
    try:
        assert lake.take_lease(conn, "retention", "a", 60)
        assert not lake.take_lease(conn, "retention", "b", 60)
        assert lake.take_lease(conn, "retention", "a", 60)  # renewed by its holder
        assert lake.take_lease(conn, "maintenance", "b", 60)  # leases are independent
        assert lake.take_lease(conn, "retention", "a", -1)  # expired now
        assert lake.take_lease(conn, "retention", "b", 60)  # taken over
    finally:
        conn.close()


_WRITER = """
import sys
from addons.settings.config import LakeSettings
from addons.store import lake, keys
from addons.store.governance import set_user
conn = lake.connect(LakeSettings(sys.argv[1], sys.argv[2]))
for i in range(25):
    keys.create_key(conn, f"user{sys.argv[3]}")
    set_user(conn, "shared", {"rpm": i + 1})
"""


def test_two_processes_writing_keys_and_limits(lake_settings: LakeSettings) -> None:
    """Key creation (insert) and limits (update-else-insert) from two processes at once: nothing lost, no
    duplicate limit rows, one row per user name."""
    conn = lake.connect(lake_settings)
    try:
        keystore.ensure_user(conn, "shared")
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, lake_settings.catalog, lake_settings.data_path,
                                   str(n)], cwd=Path(__file__).resolve().parents[2]) for n in (1, 2)]
        assert [p.wait(240) for p in procs] == [0, 0]
        assert len(keystore.load_keys(conn)) == 50
        rows = conn.execute("SELECT u.name, count(l.user_id) FROM users u LEFT JOIN aigw_user_limits l "
                            "ON l.user_id = u.id GROUP BY ALL ORDER BY 1").fetchall()
        assert rows == [("shared", 1), ("user1", 0), ("user2", 0)]
        set_user(conn, "shared", {"rpm": 99})
        assert conn.execute("SELECT rpm FROM aigw_user_limits").fetchall() == [(99,)]
        assert [u.limits.rpm for u in load_policy(conn).users.values() if u.name == "shared"] == [99]
    finally:
        conn.close()


def test_upkeep_flushes_and_compacts(lake_settings: LakeSettings) -> None:
    conn = lake.connect(lake_settings)
    try:
        for i in range(5):  # small commits: inlined in the catalog, no data file yet
            conn.execute("INSERT INTO aigw_rollup_days VALUES (DATE '2026-01-01' + ?::INTEGER, 1, now())", [i])
        table_dir = Path(lake_settings.data_path) / "main" / "aigw_rollup_days"
        assert list(table_dir.rglob("*.parquet")) == []
        lake.maintain(conn, keep_snapshots=0)
        assert len(list(table_dir.rglob("*.parquet"))) == 1  # five commits, one file
        assert conn.execute("SELECT count(*) FROM aigw_rollup_days").fetchone() == (5,)
    finally:
        conn.close()
