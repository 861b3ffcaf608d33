"""OpenTelemetry export (opt-in): one span per interception and the GenAI client metrics, over OTLP/HTTP.

Imported only when `--aibridge-otel` (or an OTLP endpoint variable) turns it on, so a gateway
without it loads none of the SDK. `sink.OtelSink` consumes the recorder's records like the
structured log and the Prometheus sink: it keeps what an interception produced until the end
record, then enqueues it for the hand-off thread (`pipeline.HandOff`), which builds the finished
span from the records' own times (`spans.py`; no span object lives across a stream), records the
measurements (`genai_metrics.py`) and hands the span to the SDK's batch processor, whose thread
exports it. A slow or dead collector only fills those bounded queues; what does not fit is dropped
and counted in `coder_aibridged_otel_dropped_spans_total`, and traffic never waits for it.

Span ids come from the interception id (its low 64 bits), trace ids too (the whole UUID) unless
the client sent a `traceparent`, whose trace the span then joins as a child (`trace_context.py`).
So the traceparent sent upstream (`--aibridge-otel-propagate-upstream`) is computed from the id
alone, and a request answering a tool call links to the span of the interception that made the
call (found through the call id, as the writer finds `thread_parent_id`).

Attributes follow the GenAI semantic conventions (development status, as of semantic-conventions
v1.40): `gen_ai.usage.input_tokens` includes cache reads and writes there, while aigw's rows
exclude them, so it is the sum of the three.
"""
