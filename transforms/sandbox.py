"""A sandboxed DuckDB for user SQL, with no Beam import (the API plans SQL too).

The sandbox: external access off (no files, no network, no extensions),
extension auto-install and auto-load off, configuration locked once set up,
and exactly one SELECT statement per query (CTEs allowed). The input
relation is always named ``events``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import duckdb
import pyarrow as pa

__all__ = ["SqlError", "borrow_connection", "plan_sql", "return_connection", "run_sql",
           "sandboxed_connection"]

_EXTRA_TABLE = "events"


class SqlError(ValueError):
    """The SQL is not one valid SELECT over ``events``; the message says why."""


DEFAULT_MEMORY_LIMIT = "2GB"


def sandboxed_connection(threads: int | None = None,
                         memory_limit: str = DEFAULT_MEMORY_LIMIT) -> duckdb.DuckDBPyConnection:
    config: dict[str, Any] = {
        "enable_external_access": False,
        "memory_limit": memory_limit,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
    }
    if threads:
        config["threads"] = threads
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET TimeZone = 'UTC'")  # timestamps come back as UTC, not the host zone
    con.execute("SET lock_configuration = true")
    return con


# A new connection costs ~25 ms of CPU (DuckDB starts a database and loads
# its built-in extensions), a fifth of a small epoch. A process keeps the
# last few it used, each for the one key it served (an epoch plan: one
# pipeline's query), and never lends one to another key; an idle one holds
# ~10 MB.
_POOL_SIZE = 2
_pool: OrderedDict[str, duckdb.DuckDBPyConnection] = OrderedDict()
_pool_lock = threading.Lock()


def borrow_connection(key: str) -> duckdb.DuckDBPyConnection:
    """The sandboxed connection kept for ``key``, or a new one."""
    with _pool_lock:
        con = _pool.pop(key, None)
    return con if con is not None else sandboxed_connection()


def return_connection(key: str, con: duckdb.DuckDBPyConnection) -> None:
    """Keep ``con`` for ``key``'s next borrow; close what the pool cannot hold.

    Only a connection whose last query ended normally comes back: ``run_sql``
    has unregistered its input, and one SELECT can leave nothing else behind.
    """
    with _pool_lock:
        surplus = _pool.pop(key, None)
        _pool[key] = con
        while len(_pool) > _POOL_SIZE:
            _, oldest = _pool.popitem(last=False)
            oldest.close()
    if surplus is not None:
        surplus.close()


def check_select(sql: str) -> None:
    """Refuse anything but one SELECT statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise SqlError(_clean(err)) from None
    if len(statements) != 1:
        raise SqlError(f"sql must be exactly one SELECT statement, found {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlError(f"sql must be a SELECT statement, found {kind.name}")


def plan_sql(sql: str, input_schema: pa.Schema) -> pa.Schema:
    """Plan ``sql`` against an empty ``events`` table; return the output schema."""
    check_select(sql)
    con = sandboxed_connection(threads=1)
    try:
        con.register(_EXTRA_TABLE, input_schema.empty_table())
        return con.sql(sql).limit(0).to_arrow_table().schema
    except duckdb.Error as err:
        raise SqlError(_clean(err)) from None
    finally:
        con.close()


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, events: pa.Table,
            timeout_seconds: float | None = None) -> pa.Table:
    """Run a planned query over one Arrow table on an open sandboxed connection.

    With ``timeout_seconds``, a query still running then is interrupted and
    ``SqlError`` raised: a runaway query must not hold a worker forever.
    """
    con.register(_EXTRA_TABLE, events)
    watchdog = threading.Timer(timeout_seconds, con.interrupt) if timeout_seconds else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.InterruptException:
        raise SqlError(f"the query ran longer than {timeout_seconds:g} s and was stopped") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        con.unregister(_EXTRA_TABLE)


def _clean(err: Exception) -> str:
    """DuckDB's message without the internals a reply must not carry."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(lines[:3])[:500]
