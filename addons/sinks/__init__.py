"""Where records go besides the database, and the recorder that fans them out: structured logs,
Prometheus metrics, OpenTelemetry, raw dumps (and the redaction they share)."""
