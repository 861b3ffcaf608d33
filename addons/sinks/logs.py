"""Logging: where every log line goes, in which format, and the structured interception log.

One stream for everything. `setup_logging` replaces mitmproxy's termlog: all
records (aigw's, mitmproxy's, tornado's) go through one queue to the outputs
chosen by `--log-human FILE` and/or `--log-json FILE` (human-readable to
stderr when neither is given). Formatting and writing happen on a listener
thread, so the event loop only enqueues a record. JSON output is one object
per line: `ts`, `level`, `logger`, `msg`, then the record's extra fields.
Configured secrets are scrubbed from every line as a last line of defence.

With `--aibridge-structured-logging`, the `StructuredLog` sink turns every
recorded row into one record with message `interception log` and a
`record_type` field, so a SIEM can filter on the message.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from queue import SimpleQueue
from typing import IO, Any

import orjson

from addons.flow.records import (
    InterceptionEnd,
    InterceptionStart,
    PromptRecord,
    Record,
    ThoughtRecord,
    TokenUsageRecord,
    ToolUsageRecord,
)
from addons.settings.config import Settings
from addons.sinks import redaction

INTERCEPTION_LOGGER = "aigw.interceptions"
INTERCEPTION_MESSAGE = "interception log"

ALERT = logging.INFO + 1  # mitmproxy's level for "info the user should notice"
VERBOSITY = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "alert": ALERT,
             "debug": logging.DEBUG}
# Per-connection chatter ("client connect", "server disconnect") is only shown at debug verbosity.
_CHATTY = ("mitmproxy.proxy.server",)
# Library loggers that are noise at info (tornado logs every mitmweb UI request).
_QUIET = ("tornado", "asyncio", "hpack", "quic", "urwid")

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_LEVEL_NAMES = {ALERT: "INFO", logging.WARNING: "WARN"}
_JSON_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


class LogSetupError(Exception):
    """A log destination cannot be opened (startup error)."""


# --------------------------------------------------------------------------- formatting


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
    client = fields.get("client")
    if isinstance(client, tuple) and record.name != INTERCEPTION_LOGGER:
        # mitmproxy puts the peer address in `client`; in aigw records `client` is the AI client's name.
        del fields["client"]
        fields["client_address"] = f"{client[0]}:{client[1]}" if len(client) >= 2 else str(client)
    return fields


def _json_default(obj: Any) -> Any:
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes | bytearray):
        return obj.decode("utf-8", "replace")
    return str(obj)


class _ScrubbingFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        # Credentials in a URL's query (`?key=…`) never reach a log, whoever logged the URL.
        line = redaction.redact_urls_in_text(self.render(record))
        return redaction.scrub(line, self.secrets) if self.secrets else line

    def render(self, record: logging.LogRecord) -> str:
        raise NotImplementedError

    def exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info:
            return self.formatException(record.exc_info)
        return record.exc_text or None


class JsonFormatter(_ScrubbingFormatter):
    """One JSON object per line: ts, level, logger, msg, then extra fields."""

    def render(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC),
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if (exc := self.exception_text(record)) is not None:
            out["exc"] = exc
        return orjson.dumps(out, default=_json_default, option=_JSON_OPTS).decode()


class HumanFormatter(_ScrubbingFormatter):
    """`2026-01-05 10:15:30.123 INFO  aigw.recorder: message key=value …` (one line per record)."""

    default_time_format = "%Y-%m-%d %H:%M:%S"
    default_msec_format = "%s.%03d"

    def render(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        line = f"{self.formatTime(record)} {level:<5} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_human_value(v)}" for k, v in extras.items())
        if (exc := self.exception_text(record)) is not None:
            line += "\n" + exc
        return line


def _human_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value and not any(c in value for c in ' "=\n\r\t'):
        return value
    if value is None or isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    # Quoted JSON keeps multi-line prompts and nested metadata on one line.
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTS).decode()


# --------------------------------------------------------------------------- outputs


class _Enqueue(QueueHandler):
    """Hands records to the listener thread without formatting them on the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Freeze what may change or die after this call (args, the live traceback); keep extra fields.
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class LogOutput:
    """The installed outputs; `close()` drains the queue and closes files."""

    def __init__(self, handler: _Enqueue, listener: QueueListener, owned: list[IO[str]]) -> None:
        self.handler = handler
        self.listener = listener
        self.owned = owned
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        logging.getLogger().removeHandler(self.handler)
        self.listener.stop()  # writes everything still queued
        for stream in self.owned:
            try:
                stream.close()
            except OSError:
                pass


def open_log_file(path: str, what: str) -> tuple[IO[str], bool]:
    """The stream for a log destination, and whether we own (must close) it."""
    if path in ("/dev/stderr", "-"):
        return sys.stderr, False
    if path == "/dev/stdout":
        return sys.stdout, False
    try:
        # Logs can carry prompts (structured logging): owner-only, like the database.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace"), True
    except OSError as e:
        raise LogSetupError(f"{what}: cannot open log file {path}: {e.strerror or e}") from None


def setup_logging(settings: Settings, verbosity: str = "info") -> LogOutput:
    """Install the outputs chosen by the settings on the root logger. Raises LogSetupError."""
    secrets = redaction.configured_secrets(settings)
    targets: list[tuple[str, str, type[_ScrubbingFormatter]]] = []
    if settings.log_human:
        targets.append((settings.log_human, "--log-human / CODER_LOGGING_HUMAN", HumanFormatter))
    if settings.log_json:
        targets.append((settings.log_json, "--log-json / CODER_LOGGING_JSON", JsonFormatter))
    if not targets:
        targets.append(("/dev/stderr", "stderr", HumanFormatter))
    handlers: list[logging.Handler] = []
    owned: list[IO[str]] = []
    try:
        for path, what, formatter in targets:
            stream, own = open_log_file(path, what)
            if own:
                owned.append(stream)
            handler = logging.StreamHandler(stream)
            handler.setFormatter(formatter(secrets))
            handlers.append(handler)
    except LogSetupError:
        for stream in owned:
            stream.close()
        raise
    queue: SimpleQueue[logging.LogRecord] = SimpleQueue()
    listener = QueueListener(queue, *handlers)
    enqueue = _Enqueue(queue)
    logging.getLogger().addHandler(enqueue)
    set_verbosity(verbosity)
    listener.start()
    return LogOutput(enqueue, listener, owned)


def set_verbosity(name: str) -> None:
    level = VERBOSITY.get(name.lower(), logging.INFO)
    logging.getLogger().setLevel(level)
    for logger in _CHATTY:
        logging.getLogger(logger).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    for logger in _QUIET:
        logging.getLogger(logger).setLevel(max(level, logging.WARNING))
    # The structured log is switched by its own flag, not by verbosity (-q keeps it).
    logging.getLogger(INTERCEPTION_LOGGER).setLevel(logging.INFO)


# --------------------------------------------------------------------------- structured log


class StructuredLog:
    """Recorder sink: one `interception log` record per recorded row."""

    MAX_OPEN = 100_000

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger(INTERCEPTION_LOGGER)
        # interception id -> who/what, repeated on every record of that interception
        self.common: dict[str, dict[str, Any]] = {}

    def __call__(self, record: Record) -> None:
        fields = self.fields(record)
        if fields is not None and self.log.isEnabledFor(logging.INFO):
            # Built directly: `Logger.info` would also walk the stack for a caller nobody prints.
            entry = logging.LogRecord(self.log.name, logging.INFO, "", 0, INTERCEPTION_MESSAGE, None, None)
            entry.__dict__.update(fields)
            self.log.handle(entry)

    def fields(self, r: Record) -> dict[str, Any] | None:
        match r:
            case InterceptionStart():
                common = {"initiator_id": r.initiator_id, "provider": r.provider, "provider_name": r.provider_name,
                          "model": r.model, "client": r.client}
                if len(self.common) >= self.MAX_OPEN:
                    self.common.pop(next(iter(self.common)))
                self.common[r.id] = common
                return {"record_type": "interception_start", "interception_id": r.id, **common,
                        "api_key_id": r.api_key_id, "client_session_id": r.client_session_id,
                        "credential_kind": r.credential_kind, "started_at": r.started_at, "metadata": r.metadata,
                        "correlating_tool_call_id": r.correlating_tool_call_id}
            case InterceptionEnd():
                return {"record_type": "interception_end", "interception_id": r.id, **self.common.pop(r.id, {}),
                        "ended_at": r.ended_at, "status": r.status, "metadata": r.metadata}
            case TokenUsageRecord():
                return {"record_type": "token_usage", **self._of(r.interception_id),
                        "msg_id": r.provider_response_id, "input_tokens": r.input_tokens,
                        "output_tokens": r.output_tokens, "cache_read_input_tokens": r.cache_read_input_tokens,
                        "cache_write_input_tokens": r.cache_write_input_tokens, "metadata": r.metadata,
                        "created_at": r.created_at}
            case PromptRecord():
                return {"record_type": "prompt_usage", **self._of(r.interception_id),
                        "msg_id": r.provider_response_id, "prompt": r.prompt, "created_at": r.created_at}
            case ToolUsageRecord():
                return {"record_type": "tool_usage", **self._of(r.interception_id),
                        "msg_id": r.provider_response_id, "tool_call_id": r.provider_tool_call_id, "tool": r.tool,
                        "input": r.input, "server_url": r.server_url, "injected": r.injected,
                        "invocation_error": r.invocation_error, "created_at": r.created_at}
            case ThoughtRecord():
                return {"record_type": "model_thought", **self._of(r.interception_id), "content": r.content,
                        "metadata": r.metadata, "created_at": r.created_at}
        return None

    def _of(self, interception_id: str) -> dict[str, Any]:
        return {"interception_id": interception_id, **self.common.get(interception_id, {})}


# --------------------------------------------------------------------------- addon


class Logs:
    """Addon: log verbosity (mitmproxy's `termlog_verbosity` option)."""

    def load(self, loader: Any) -> None:
        # aigw replaces mitmproxy's termlog, which normally declares this option; keep its name so
        # `--set termlog_verbosity=debug` works as in mitmdump.
        if "termlog_verbosity" not in loader.master.options:
            loader.add_option("termlog_verbosity", str, "info", "Log verbosity.", choices=list(VERBOSITY))

    def configure(self, updated: set[str]) -> None:
        if "termlog_verbosity" in updated:
            from mitmproxy import ctx

            set_verbosity(ctx.options.termlog_verbosity)
