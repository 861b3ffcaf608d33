"""aigw benchmark harness (run it as `scripts/bench`; see BENCHMARKS.md).

Processes: a fast fake upstream (`upstream`), the systems under test
(`systems`), and an asyncio load generator (`loadgen`), each its own process;
`main` orchestrates the scenarios and writes the results.
"""
