"""A sandboxed, bounded DuckDB for user SQL, with no Beam import (the API plans SQL too).

The sandbox: external access off (no files, no network, no extensions),
extension auto-install and auto-load off, no Python replacement scans, no
spilling to disk (so no temporary directory to fill or to show), the
configuration locked once set up, and the rules of
``transforms.sql_policy`` (one SELECT over ``events``, no function that
reads the server's settings). The input relation is always ``events``.

The bounds, read once from the environment (by ``transforms.limits``):

- ``PIPELINE_DO_SQL_MEMORY_MB`` (2048): the memory budget of one query.
  DuckDB's ``memory_limit`` gets half of it; the materialized result at most
  ``PIPELINE_DO_SQL_MAX_OUTPUT_MB`` (a quarter); what DuckDB allocates
  outside its buffer manager (Arrow results, list building, recursive CTE
  state) is bounded only by the process: ``limit_process_memory`` sets
  ``RLIMIT_DATA``, which (unlike ``RLIMIT_AS``, measured here) does not
  count the address space DuckDB and the allocators reserve but never touch.
- ``PIPELINE_DO_SQL_TIMEOUT_SECONDS`` (300): an epoch's query is
  interrupted after it; ``PIPELINE_DO_DRY_RUN_TIMEOUT_SECONDS`` (30) bounds a
  plan or dry run in the API (``transforms.isolation``).
- ``PIPELINE_DO_SQL_THREADS`` (DuckDB's default, one per core).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from transforms.limits import (
    DRY_RUN_TIMEOUT_SECONDS,
    SQL_MAX_OUTPUT_MB,
    SQL_MEMORY_MB,
    SQL_THREADS,
    SQL_TIMEOUT_SECONDS,
    duckdb_memory_limit,
    memory_budget_error,
)
from transforms.sql_policy import INPUT_TABLE, SqlError, check_sql, clean_message

__all__ = ["DRY_RUN_TIMEOUT_SECONDS", "SQL_MAX_OUTPUT_MB", "SQL_MEMORY_MB", "SQL_TIMEOUT_SECONDS",
           "SqlError", "borrow_connection", "check_select", "plan_sql",
           "return_connection", "run_sql", "sandboxed_connection", "sql_chunks"]


# Rows per record batch read from a running query: the unit in which the
# output cap is checked, so a runaway result stops within one batch.
_BATCH_ROWS = 64 * 1024

check_select = check_sql  # the old name, kept for callers


def sandboxed_connection(threads: int | None = None,
                         memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A new sandboxed connection; ``memory_limit`` defaults to half the SQL budget."""
    config: dict[str, Any] = {
        "enable_external_access": False,
        "memory_limit": memory_limit or duckdb_memory_limit(SQL_MEMORY_MB),
        "temp_directory": "",  # no spilling: the budget is memory, and no path to show
        "max_temp_directory_size": "0KiB",
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "python_enable_replacements": False,
    }
    threads = threads or SQL_THREADS
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


def plan_sql(sql: str, input_schema: pa.Schema, *, timeout_seconds: float | None = None,
             memory_mb: int | None = None) -> pa.Schema:
    """Plan ``sql`` against an empty ``events`` table; return the output schema.

    Planning evaluates constant expressions (``repeat('x', 10^9)``, a table
    function's arguments), so it is bounded like a run: in the API it runs
    in a child process (``transforms.isolation.plan_isolated``).
    """
    check_sql(sql)
    con = sandboxed_connection(threads=1,
                               memory_limit=duckdb_memory_limit(memory_mb or SQL_MEMORY_MB))
    try:
        con.register(INPUT_TABLE, input_schema.empty_table())
        watchdog = _Watchdog(con, timeout_seconds)
        try:
            with watchdog.running():
                return _bounded(lambda: con.sql(sql).limit(0).to_arrow_table().schema,
                                watchdog, memory_mb)
        finally:
            watchdog.close()
    finally:
        con.close()


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, events: pa.Table,
            timeout_seconds: float | None = None, *, max_rows: int | None = None,
            max_output_mb: int | None = None, memory_mb: int | None = None) -> pa.Table:
    """Run a planned query over one Arrow table on an open sandboxed connection.

    The result is read in record batches and stops at ``max_rows`` (the
    query is cut there: a dry run reads no more than it shows) or fails past
    ``max_output_mb`` (default ``SQL_MAX_OUTPUT_MB``), so a cross join that
    explodes ends with ``SqlError`` code ``output_limit`` instead of filling
    the process. With ``timeout_seconds``, a query still running then is
    interrupted (code ``timeout``); out of memory is code ``memory_limit``.
    """
    chunks = sql_chunks(con, sql, events, timeout_seconds, max_rows=max_rows,
                        max_output_mb=max_output_mb, memory_mb=memory_mb)
    try:
        return next(chunks)
    finally:
        chunks.close()


def sql_chunks(con: duckdb.DuckDBPyConnection, sql: str, events: pa.Table,
               timeout_seconds: float | None = None, *, chunk_rows: int | None = None,
               max_rows: int | None = None, max_output_mb: int | None = None,
               memory_mb: int | None = None) -> Generator[pa.Table, None, None]:
    """``run_sql``'s query, its result handed over in tables of at least
    ``chunk_rows`` rows (the last one fewer) as DuckDB produces them.

    A consumer that writes each chunk before taking the next holds one chunk
    of the result instead of all of it (an epoch's result was its largest
    allocation). Without ``chunk_rows``: the whole result as one table. The
    first table is always yielded, empty if the result is, so its schema is
    known. Only the time spent in DuckDB counts toward ``timeout_seconds``,
    not the consumer's between chunks; the output cap counts the whole result.
    """
    cap = (max_output_mb or SQL_MAX_OUTPUT_MB) << 20
    watchdog = _Watchdog(con, timeout_seconds)
    con.register(INPUT_TABLE, events)
    reader: Any = None
    finished = False
    try:
        def start() -> Any:
            relation = con.sql(sql)
            if max_rows is not None:
                relation = relation.limit(max_rows)
            return relation.to_arrow_reader(_BATCH_ROWS)

        with watchdog.running():
            reader = _bounded(start, watchdog, memory_mb)
        pending: list[pa.RecordBatch] = []
        rows = size = chunks = 0
        while True:
            with watchdog.running():
                batch = _bounded(lambda: _next_batch(reader), watchdog, memory_mb)
            if batch is None:
                finished = True
                break
            size += batch.nbytes
            if size > cap:
                raise SqlError(f"the SQL's result is larger than its {cap >> 20} MB limit: "
                               "check its joins", "output_limit")
            pending.append(batch)
            rows += batch.num_rows
            if chunk_rows is not None and rows >= chunk_rows:
                yield pa.Table.from_batches(pending, schema=reader.schema)
                pending, rows, chunks = [], 0, chunks + 1
        if pending or not chunks:
            yield pa.Table.from_batches(pending, schema=reader.schema)
    finally:
        try:
            if reader is not None:
                if not finished:  # abandoned (output cap, a failing consumer): stop it now
                    con.interrupt()
                with watchdog.running():  # closing waits for a query still producing
                    reader.close()
        finally:
            watchdog.close()
            con.unregister(INPUT_TABLE)


def _next_batch(reader: Any) -> pa.RecordBatch | None:
    try:
        batch: pa.RecordBatch = reader.read_next_batch()
    except StopIteration:
        return None
    return batch


class _Watchdog:
    """Interrupts the connection's query once it has run ``timeout_seconds``
    in all: the time inside ``running()`` blocks, so a consumer's work between
    a streamed result's chunks is not the query's. One thread per query,
    started by the first block (``close`` ends it)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_seconds: float | None) -> None:
        self.fired = threading.Event()
        self.timeout_seconds = timeout_seconds
        self._con = con
        self._left = timeout_seconds or 0.0
        self._deadline: float | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        if not self.timeout_seconds:
            yield
            return
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="pdo-sql-watchdog",
                                                daemon=True)
                self._thread.start()
            started = time.monotonic()
            self._deadline = started + self._left
            self._wake.notify()
        try:
            yield
        finally:
            with self._wake:
                self._left -= time.monotonic() - started
                self._deadline = None
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _watch(self) -> None:
        with self._wake:
            while not self._closed:
                if self._deadline is None:
                    self._wake.wait()
                    continue
                wait = self._deadline - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                self.fired.set()
                self._con.interrupt()
                return


def _bounded(work: Any, watchdog: _Watchdog, memory_mb: int | None) -> Any:
    """``work()``, with DuckDB's and Python's failures turned into ``SqlError``."""
    budget = memory_mb or SQL_MEMORY_MB
    try:
        return work()
    except SqlError:
        raise
    except MemoryError:
        raise memory_budget_error(budget) from None
    except (duckdb.Error, pa.ArrowException, OSError) as err:
        if watchdog.fired.is_set():
            raise SqlError(f"the SQL ran longer than {watchdog.timeout_seconds:g} s and was stopped",
                           "timeout") from None
        if isinstance(err, (duckdb.OutOfMemoryException, pa.ArrowMemoryError)) \
                or "Out of Memory" in str(err):
            raise memory_budget_error(budget) from None
        raise SqlError(clean_message(err)) from None
