"""Tests start the real server through :mod:`control_api.devserver`, poll it, and read
what it wrote back with DuckDB."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import duckdb

from control_api.devserver import LiveServer, free_port

__all__ = ["LiveServer", "free_port", "query", "wait_for"]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1,
             message: str = "condition") -> Any:
    """Poll until ``predicate`` returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def query(sql: str) -> list[tuple[Any, ...]]:
    """All rows of one query, run on a DuckDB connection of its own.

    Never DuckDB's shared default connection (``duckdb.sql``): a result left
    open on it breaks every later query of the test run.
    """
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()
