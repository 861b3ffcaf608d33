"""Dump writer and formatting (addons/sinks/dumps.py)."""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addons.sinks.dumps import DumpWriter, format_request, format_response_head, timestamp

KEY = "sk-ant-api03-PROVIDER-SECRET-aaaaaaaaaaaaaaaa"


def test_files_are_owner_only_and_appended_in_order(tmp_path: Path) -> None:
    writer = DumpWriter()
    writer.start()
    path = tmp_path / "inst" / "x.resp.txt"
    for part in (b"a", b"b", b"c"):
        writer.write(path, part)
    assert writer.flush()
    assert path.read_bytes() == b"abc"  # readable while still open
    writer.end(path, b"\n[end]")
    writer.close()
    assert path.read_bytes() == b"abc\n[end]"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_unwritable_directory_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    writer = DumpWriter()
    writer.start()
    with caplog.at_level(logging.WARNING, logger="aigw.dumps"):
        writer.probe(blocker / "inst", "inst")
        for i in range(3):
            writer.write(blocker / "inst" / f"{i}.txt", b"x")
        writer.close()
    warnings = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(warnings) == 1 and "'inst'" in warnings[0].getMessage()


def test_a_writer_that_falls_behind_drops_instead_of_growing(tmp_path: Path) -> None:
    writer = DumpWriter(max_pending=10)  # not started: nothing drains
    assert writer.write(tmp_path / "a", b"12345678")
    assert not writer.write(tmp_path / "a", b"12345678")
    assert writer.dropped == 8


def test_request_and_response_formatting_redacts_credentials() -> None:
    request = tutils.treq(host="api.anthropic.com", port=443, path=b"/v1/messages?key=abc&beta=true",
                          headers=http.Headers([(b"x-api-key", KEY.encode()), (b"content-type", b"application/json")]),
                          content=b'{"echo": "' + KEY.encode() + b'"}')
    request.scheme = "https"
    out = format_request(request, {KEY})
    assert KEY.encode() not in out
    assert out.startswith(b"GET https://api.anthropic.com/v1/messages?key=[REDACTED]&beta=true HTTP/1.1\r\n")
    assert b"x-api-key: [REDACTED]\r\n" in out and b"content-type: application/json\r\n" in out
    assert out.endswith(b'\r\n\r\n{"echo": "[REDACTED]"}')
    response = tutils.tresp(headers=http.Headers([(b"set-cookie", b"s=1")]))
    assert format_response_head(response) == b"HTTP/1.1 200 OK\r\nset-cookie: [REDACTED]\r\n\r\n"


def test_timestamp_sorts_and_is_utc() -> None:
    assert timestamp(datetime(2026, 1, 5, 10, 15, 30, 123456, tzinfo=UTC)) == "20260105T101530.123Z"
