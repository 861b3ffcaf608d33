"""The GenAI client metrics of the semantic conventions: token usage, operation duration, time to first chunk."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider

from addons.flow.records import InterceptionEnd
from addons.sinks.otel.spans import OpenInterception, seconds

# The semantic conventions' advised bucket boundaries (seconds; tokens).
_SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


class GenAiMetrics:
    """The three histograms, recorded once per ended interception (on the hand-off thread)."""

    def __init__(self, meters: MeterProvider) -> None:
        meter = meters.get_meter("aigw")
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS)
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streaming response.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS)

    def record(self, o: OpenInterception, end: InterceptionEnd, common: dict[str, Any]) -> None:
        start = o.start
        self.duration.record(seconds(start.started_at, end.ended_at), common)
        base = {k: v for k, v in common.items() if k != "error.type"}
        if o.usage is not None:
            u = o.usage
            total_input = u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens
            self.token_usage.record(total_input, {**base, "gen_ai.token.type": "input"})
            self.token_usage.record(u.output_tokens, {**base, "gen_ai.token.type": "output"})
        if end.first_chunk_at is not None and start.metadata.get("stream") is True:
            self.first_chunk.record(seconds(start.started_at, end.first_chunk_at), base)
