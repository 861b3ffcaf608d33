"""Fixtures shared by the unit suites."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest

from tests.seed import SeedSummary, seed


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[duckdb.DuckDBPyConnection, SeedSummary]]:
    """An in-memory database holding the seed data set (tests/seed.py), one per test module."""
    conn = duckdb.connect()
    summary = seed(conn)
    yield conn, summary
    conn.close()
