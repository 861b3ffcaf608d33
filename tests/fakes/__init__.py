"""Local fake upstream servers for tests (stdlib HTTP, run in background threads)."""
