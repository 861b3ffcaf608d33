"""Records: what an interception produces, as plain values.

The intercept addon builds these; the recorder fans them out to sinks (the
DuckDB writer, structured logs, metrics). Nothing here touches a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class InterceptionStart:
    id: str  # UUID text
    initiator_id: str  # user id (UUID text)
    api_key_id: str | None
    provider: str  # instance type: anthropic | openai | copilot
    provider_name: str  # instance name
    model: str | None
    client: str
    client_session_id: str | None
    credential_kind: str  # centralized | byok
    credential_hint: str | None
    started_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    correlating_tool_call_id: str | None = None
    # The client's W3C trace context headers, for OpenTelemetry export (not stored).
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(slots=True)
class InterceptionEnd:
    id: str
    ended_at: datetime
    status: str  # completed | failed | cancelled
    metadata: dict[str, Any] = field(default_factory=dict)  # merged into the start's metadata
    # When the first response chunk of a stream arrived (time to first token; not stored).
    first_chunk_at: datetime | None = None
    finish_reasons: tuple[str, ...] = ()  # why the model stopped, as the provider says it (not stored)


@dataclass(slots=True)
class TokenUsageRecord:
    interception_id: str
    provider_response_id: str | None
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_write_input_tokens: int
    metadata: dict[str, Any]
    created_at: datetime
    # Pricing inputs: the interception's provider type and model.
    provider: str = ""
    model: str | None = None


@dataclass(slots=True)
class PromptRecord:
    interception_id: str
    provider_response_id: str | None
    prompt: str
    created_at: datetime


@dataclass(slots=True)
class ToolUsageRecord:
    interception_id: str
    provider_response_id: str | None
    provider_tool_call_id: str
    tool: str
    input: str
    server_url: str | None
    injected: bool
    invocation_error: str | None
    created_at: datetime
    provider_item_id: str | None = None


@dataclass(slots=True)
class ThoughtRecord:
    interception_id: str
    content: str
    metadata: dict[str, Any]
    created_at: datetime


type Record = (
    InterceptionStart | InterceptionEnd | TokenUsageRecord | PromptRecord | ToolUsageRecord | ThoughtRecord
)
