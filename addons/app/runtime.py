"""How CLI commands find a running gateway: a small file next to the database.

DuckDB allows one writing process; while the gateway runs it owns the file,
so commands that change or read data go through its admin API instead. The
file holds the gateway's URL, pid and a per-run admin token, readable only by
its owner.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class RunningGateway:
    url: str
    pid: int
    token: str


def runtime_path(db: Path) -> Path:
    return db.with_name(db.stem + ".gateway.json")


def write(db: Path, gateway: RunningGateway) -> None:
    path = runtime_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": gateway.url, "pid": gateway.pid, "token": gateway.token}, f)
    os.replace(tmp, path)


def remove(db: Path, pid: int) -> None:
    found = read(db, check_alive=False)
    if found is not None and found.pid == pid:
        runtime_path(db).unlink(missing_ok=True)


def read(db: Path, *, check_alive: bool = True) -> RunningGateway | None:
    try:
        data = json.loads(runtime_path(db).read_text())
        gateway = RunningGateway(url=str(data["url"]), pid=int(data["pid"]), token=str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if check_alive and not _alive(gateway.pid):
        return None
    return gateway


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def healthy(gateway: RunningGateway, timeout: float = 2.0) -> bool:
    """Whether the gateway answers its unauthenticated `/healthz` with 200 (ready)."""
    import urllib.request  # here: urllib.request (http.client, email, ssl) costs ~10 ms at every CLI start

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(gateway.url + "/healthz", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


class GatewayApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def call(gateway: RunningGateway, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
    """Call the running gateway's admin API; raise GatewayApiError with its message on failure."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        gateway.url + path, data=data, method=method,
        headers={"authorization": f"Bearer {gateway.token}", "content-type": "application/json"},
    )
    # Never route the local admin call through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {e.code}"
        raise GatewayApiError(e.code, message) from None
    except urllib.error.URLError as e:
        raise GatewayApiError(0, f"cannot reach the running gateway at {gateway.url}: {e.reason}") from None
