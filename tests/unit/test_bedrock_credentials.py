"""BedrockCredentials: static keys, boto3's default chain, background refresh. Nothing contacts AWS."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from addons.upstreams.aws import BedrockCredentials, default_chain


@pytest.fixture(autouse=True)
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real AWS config, no instance metadata, no container endpoint: only what a test sets."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def managed() -> Iterator[list[BedrockCredentials]]:
    started: list[BedrockCredentials] = []
    yield started
    for creds in started:
        creds.stop()


def start(managed: list[BedrockCredentials], creds: BedrockCredentials) -> BedrockCredentials:
    managed.append(creds)
    creds.start()
    return creds


def wait_until(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_static_keys(managed: list[BedrockCredentials]) -> None:
    creds = start(managed, BedrockCredentials(access_key="AKIDSTATIC", secret_key="s3cr3t", session_token="tok"))
    current = creds.current()
    assert current is not None and (current.access_key, current.secret_key, current.token) == (
        "AKIDSTATIC",
        "s3cr3t",
        "tok",
    )
    assert creds.error is None and creds.expiry is None and creds.wait_ready(0)


def test_partial_static_keys_rejected() -> None:
    with pytest.raises(ValueError, match="together"):
        BedrockCredentials(access_key="AKID")


def test_nothing_before_start() -> None:
    creds = BedrockCredentials(source=lambda: Credentials("a", "b"))
    assert creds.current() is None and creds.error == "credentials not resolved yet"


def test_default_chain_env_vars_resolved_off_the_calling_thread(
    managed: list[BedrockCredentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    threads: list[threading.Thread] = []
    chain = default_chain()

    def source() -> Credentials | None:
        threads.append(threading.current_thread())
        return chain()

    creds = start(managed, BedrockCredentials(source=source))
    assert creds.wait_ready(5)
    current = creds.current()
    assert current is not None and (current.access_key, current.secret_key) == ("AKIDENV", "env-secret")
    assert threads and all(t is not threading.current_thread() for t in threads)


def test_default_chain_shared_files_and_profile(managed: list[BedrockCredentials], isolated_aws_env: Path) -> None:
    (isolated_aws_env / "credentials").write_text(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n\n"
        "[dev]\naws_access_key_id = AKIDDEV\naws_secret_access_key = dev-secret\n"
    )
    (isolated_aws_env / "config").write_text("[profile dev]\nregion = eu-west-1\n")
    default = start(managed, BedrockCredentials())
    dev = start(managed, BedrockCredentials(profile="dev"))
    assert default.wait_ready(5) and dev.wait_ready(5)
    assert default.current().access_key == "AKIDDEFAULT"  # type: ignore[union-attr]
    assert dev.current().access_key == "AKIDDEV"  # type: ignore[union-attr]


def test_aws_profile_env_var(
    managed: list[BedrockCredentials], isolated_aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated_aws_env / "config").write_text(
        "[profile work]\naws_access_key_id = AKIDWORK\naws_secret_access_key = work-secret\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "work")
    creds = start(managed, BedrockCredentials())
    assert creds.wait_ready(5) and creds.current().access_key == "AKIDWORK"  # type: ignore[union-attr]


def test_no_credentials_found(managed: list[BedrockCredentials]) -> None:
    creds = start(managed, BedrockCredentials(retry_initial=0.05, poll_interval=0.2))
    assert creds.wait_ready(5) is False
    assert creds.current() is None
    assert creds.error is not None and "no AWS credentials found" in creds.error


def test_partial_env_credentials_error_has_no_secret(
    managed: list[BedrockCredentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "only-the-secret-value")
    creds = start(managed, BedrockCredentials(retry_initial=0.05))
    assert creds.wait_ready(5) is False
    assert creds.error is not None and "only-the-secret-value" not in creds.error


def test_failing_source_is_retried(managed: list[BedrockCredentials]) -> None:
    calls = {"n": 0}

    def flaky() -> Credentials | None:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("metadata endpoint unreachable")
        return Credentials("AKIDLATE", "late-secret")

    creds = start(managed, BedrockCredentials(source=flaky, retry_initial=0.02, poll_interval=0.1))
    assert creds.wait_ready(5) is False  # first attempt failed
    assert "ConnectionError: metadata endpoint unreachable" in (creds.error or "")
    assert wait_until(lambda: creds.current() is not None)
    assert creds.error is None and calls["n"] == 3


class FakeClock:
    """One clock for botocore's expiry logic (datetime) and ours (epoch seconds)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def datetime(self) -> dt.datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()


def refreshable(clock: FakeClock, expires_in: float, refresh: object) -> RefreshableCredentials:
    return RefreshableCredentials(
        access_key="AKIDOLD",
        secret_key="old-secret",
        token="old-token",
        expiry_time=clock.now + dt.timedelta(seconds=expires_in),
        refresh_using=refresh,  # type: ignore[arg-type]
        method="test",
        time_fetcher=clock.datetime,
    )


def test_refreshes_before_expiry(managed: list[BedrockCredentials]) -> None:
    clock = FakeClock()
    refresh_threads: list[threading.Thread] = []

    def refresh() -> dict[str, str]:
        refresh_threads.append(threading.current_thread())
        n = len(refresh_threads)
        return {
            "access_key": f"AKIDNEW{n}",
            "secret_key": f"new-secret-{n}",
            "token": f"new-token-{n}",
            "expiry_time": (clock.now + dt.timedelta(hours=1)).isoformat(),
        }

    source = refreshable(clock, 20 * 60, refresh)
    creds = start(managed, BedrockCredentials(source=lambda: source, poll_interval=0.05, clock=clock.epoch))
    assert creds.wait_ready(5)
    assert creds.current().access_key == "AKIDOLD"  # type: ignore[union-attr]
    time.sleep(0.2)
    assert refresh_threads == []  # 20 minutes left: nothing due yet

    clock.advance(16 * 60)  # 4 minutes left: under the 5-minute margin
    assert wait_until(lambda: creds.current().access_key == "AKIDNEW1")  # type: ignore[union-attr]
    current = creds.current()
    assert current is not None and (current.secret_key, current.token) == ("new-secret-1", "new-token-1")
    assert creds.expiry == pytest.approx(clock.epoch() + 3600, abs=2)
    assert all(t is not threading.current_thread() for t in refresh_threads)


def test_refresh_failure_expires_and_error_has_no_secret(managed: list[BedrockCredentials]) -> None:
    clock = FakeClock()

    def refresh() -> dict[str, str]:
        raise RuntimeError("STS said no to old-secret / old-token")

    source = refreshable(clock, 20 * 60, refresh)
    creds = start(
        managed,
        BedrockCredentials(source=lambda: source, poll_interval=0.05, retry_initial=0.02, clock=clock.epoch),
    )
    assert creds.wait_ready(5)
    clock.advance(16 * 60)  # refresh due, and failing
    assert wait_until(lambda: creds._state[2] is not None)
    assert creds.current() is not None  # still valid for 4 more minutes
    clock.advance(5 * 60)  # now expired
    assert creds.current() is None
    error = creds.error
    assert error is not None and "STS said no" in error
    assert "old-secret" not in error and "old-token" not in error


def test_stop_ends_the_thread(managed: list[BedrockCredentials]) -> None:
    clock = FakeClock()
    source = refreshable(clock, 3600, lambda: {})
    creds = BedrockCredentials(source=lambda: source, poll_interval=30, clock=clock.epoch)
    creds.start()
    assert creds.wait_ready(5)
    started = time.monotonic()
    creds.stop()
    assert time.monotonic() - started < 2
    assert not any(t.name == "bedrock-credentials" and t.is_alive() for t in threading.enumerate())
