"""A real PostgreSQL (the DuckLake catalog) and a local S3 (moto) for the lake tests.

PostgreSQL runs from the OS packages (`initdb` + `pg_ctl`) on a unix socket in a temp folder, nothing on
the network; as root it runs as the `postgres` user (initdb refuses root). The tests skip, saying why,
when PostgreSQL or moto cannot be found (`.ci/run` installs PostgreSQL).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.gateway_process import free_port

_PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg_tool(name: str) -> str | None:
    for folder in _PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


@dataclass
class Postgres:
    socket_dir: Path
    port: int
    user: str
    _run: list[str]
    _ids = count()

    def _ctl(self, *args: str) -> None:
        pg_ctl = _pg_tool("pg_ctl")
        assert pg_ctl is not None
        subprocess.run([*self._run, pg_ctl, "-D", str(self.socket_dir / "data"), "-l", str(self.socket_dir / "log"),
                        "-w", *args], check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-o", f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c max_connections=200",
                  "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def create_db(self) -> str:
        """A fresh database; returns its DuckLake catalog string."""
        name = f"aigw{next(self._ids)}"
        createdb = _pg_tool("createdb")
        assert createdb is not None
        subprocess.run([*self._run, createdb, "-h", str(self.socket_dir), "-p", str(self.port), name],
                       check=True, capture_output=True)
        return f"ducklake:postgres:dbname={name} host={self.socket_dir} port={self.port} user={self.user}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL not found (initdb, pg_ctl): apt-get install postgresql, or run .ci/run")
    run: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    # Under /tmp itself: pytest's folders are private to root, and a unix socket path must stay short.
    base = Path(tempfile.mkdtemp(prefix="aigw-pg-"))
    if os.getuid() == 0:  # initdb refuses root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run PostgreSQL as")
        run, user = ["runuser", "-u", "postgres", "--"], "postgres"
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data = base / "data"
    subprocess.run([*run, initdb, "-A", "trust", "-U", user, "-D", str(data)], check=True, capture_output=True)
    server = Postgres(base, free_port(), user, run)
    server.start()
    try:
        yield server
    finally:
        subprocess.run([*run, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]
    _ids = count()

    def bucket(self) -> str:
        import boto3

        name = f"lake{next(self._ids)}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.skip("moto_server not installed (pip install -e '.[test]')")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "log", "wb")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1, trust_env=False)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    try:
        yield S3(endpoint, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "CODER_AIBRIDGE_S3_ENDPOINT": endpoint})
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """Each lake module's own fake provider (the suite's is shared by every module): their replies queue
    scripted streams."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()
