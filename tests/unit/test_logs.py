"""Log output (addons/sinks/logs.py): formats, destinations, secret scrubbing, the structured interception log."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from addons.flow.records import InterceptionEnd, InterceptionStart, PromptRecord, TokenUsageRecord, ToolUsageRecord
from addons.settings.config import Settings
from addons.settings.instances import Instance
from addons.sinks.logs import (
    INTERCEPTION_LOGGER,
    HumanFormatter,
    JsonFormatter,
    LogSetupError,
    StructuredLog,
    setup_logging,
)

KEY = "sk-ant-api03-PROVIDER-SECRET-aaaaaaaaaaaaaaaa"
T = datetime(2026, 1, 5, 10, 15, 30, 123000, tzinfo=UTC)


def settings(**kw: object) -> Settings:
    instance = Instance(type="anthropic", name="anthropic", keys=(KEY,), base_url="https://x", dump_dir=None,
                        bedrock=None, source="indexed")
    return Settings(instances=(instance,), **kw)  # type: ignore[arg-type]


def record(msg: str, *args: object, name: str = "aigw.test", **extra: object) -> logging.LogRecord:
    r = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    r.__dict__.update(extra)
    return r


def test_json_lines_carry_ts_level_logger_msg_and_extras() -> None:
    line = JsonFormatter([KEY]).format(record("hello %s", "world", name="aigw.x", record_type="t", n=3,
                                              at=T, client=("127.0.0.1", 5555)))
    data = json.loads(line)
    assert data["msg"] == "hello world" and data["level"] == "INFO" and data["logger"] == "aigw.x"
    assert data["ts"].endswith("Z") and data["record_type"] == "t" and data["n"] == 3
    assert data["at"] == "2026-01-05T10:15:30.123000Z"
    assert data["client_address"] == "127.0.0.1:5555" and "client" not in data  # mitmproxy's peer address
    assert "\n" not in line


def test_secrets_are_scrubbed_from_every_format() -> None:
    for formatter in (JsonFormatter([KEY]), HumanFormatter([KEY])):
        out = formatter.format(record("key is %s", KEY, header=f"Bearer {KEY}"))
        assert KEY not in out and "[REDACTED]" in out


def test_human_lines_stay_one_line() -> None:
    out = HumanFormatter().format(record("interception log", prompt="two\nlines", n=1, ok=True))
    assert "\n" not in out and 'prompt="two\\nlines"' in out and "n=1" in out and "ok=true" in out


def test_unopenable_log_file_is_a_startup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LogSetupError, match="--log-json"):
        setup_logging(settings(log_json=str(blocker / "sub.log")))


def test_setup_writes_json_to_the_file_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "gw.log"
    output = setup_logging(settings(log_json=str(path)))
    try:
        logging.getLogger("aigw.test").info("one %d", 1, extra={"k": "v"})
        logging.getLogger("aigw.test").debug("not at info")
        logging.getLogger(INTERCEPTION_LOGGER).info("interception log", extra={"record_type": "x"})
    finally:
        output.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["msg"], d.get("k"), d.get("record_type")) for d in lines] == [
        ("one 1", "v", None), ("interception log", None, "x")]
    assert path.stat().st_mode & 0o777 == 0o600


def start(iid: str) -> InterceptionStart:
    return InterceptionStart(id=iid, initiator_id="u-1", api_key_id="k-1", provider="anthropic",
                             provider_name="anthropic", model="claude", client="Claude Code",
                             client_session_id="s", credential_kind="centralized", credential_hint="sk-…aaaa",
                             started_at=T, metadata={"route": "/v1/messages"})


def test_structured_log_fields_per_record_type() -> None:
    sink = StructuredLog()
    rows = [sink.fields(r) for r in (
        start("i1"),
        TokenUsageRecord("i1", "msg_1", 25, 12, 100, 7, {"reasoning_tokens": 3}, T),
        PromptRecord("i1", "msg_1", "hi there", T),
        ToolUsageRecord("i1", "msg_1", "toolu_1", "get_weather", '{"x": 1}', None, False, None, T),
        InterceptionEnd("i1", T, "completed", {"http_status": 200}),
    )]
    assert [r["record_type"] for r in rows if r] == [
        "interception_start", "token_usage", "prompt_usage", "tool_usage", "interception_end"]
    first, tokens, prompt, tool, end = rows
    assert first is not None and first["initiator_id"] == "u-1" and first["started_at"] == T
    assert "credential_hint" not in first
    assert tokens is not None and (tokens["input_tokens"], tokens["output_tokens"]) == (25, 12)
    assert tokens["model"] == "claude" and tokens["initiator_id"] == "u-1"  # repeated for SIEM filters
    assert prompt is not None and prompt["prompt"] == "hi there"
    assert tool is not None and (tool["tool"], tool["input"], tool["injected"]) == ("get_weather", '{"x": 1}', False)
    assert end is not None and end["ended_at"] == T and end["status"] == "completed"
    assert sink.common == {}  # forgotten at the end
