"""``DuckDbSql``: the Beam step that runs a pipeline's SQL over Arrow tables.

Each element is one Arrow table (an epoch's events, or a window's batch);
the query's result comes out as one Arrow table, or with ``chunk_rows`` as
tables of about that many rows, each handed downstream as DuckDB makes it:
the epoch graph writes each chunk before the next is computed, so a worker
holds one chunk of an epoch's result instead of all of it. The DuckDB
connection opens in ``setup`` and lives as long as the DoFn instance; with
a ``pool_key`` it is borrowed from, and given back to, the process's pool
(``transforms.sandbox``), so the next run of the same plan skips the start.
Only after small inputs: a connection that ran a query over a large table
keeps tens of MB it would give back when closed, and opening one costs
little next to such a query.

The query is bounded (``transforms.sandbox``): interrupted after
``PIPELINE_DO_SQL_TIMEOUT_SECONDS``, DuckDB held to half of
``PIPELINE_DO_SQL_MEMORY_MB`` with no spilling, and its result read in
record batches that stop past ``PIPELINE_DO_SQL_MAX_OUTPUT_MB``, so a
cross join that explodes fails the epoch with a ``SqlError`` instead of
filling the worker. The worker process itself is capped by the job
manager's pool (``transforms.limits.limit_process_memory``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from transforms.coders import ArrowTableCoder  # noqa: F401  (registers the coder)
from transforms.sandbox import (
    SQL_TIMEOUT_SECONDS,
    borrow_connection,
    check_select,
    return_connection,
    sandboxed_connection,
    sql_chunks,
)

__all__ = ["DuckDbSql"]

# Inputs up to this many rows leave the connection small enough to keep.
POOL_MAX_INPUT_ROWS = 50_000


class _DuckDbSqlFn(beam.DoFn):
    def __init__(self, sql: str, timeout_seconds: float, pool_key: str | None,
                 chunk_rows: int | None = None) -> None:
        self._sql = sql
        self._timeout = timeout_seconds
        self._pool_key = pool_key
        self._chunk_rows = chunk_rows
        self._con: Any = None
        self._keep = True

    def setup(self) -> None:
        key = self._pool_key
        self._con = sandboxed_connection() if key is None else borrow_connection(key)

    def process(self, events: pa.Table) -> Iterator[pa.Table]:
        self._keep = False
        for result in sql_chunks(self._con, self._sql, events, self._timeout,
                                 chunk_rows=self._chunk_rows):
            if result.num_rows:
                yield result
        self._keep = events.num_rows <= POOL_MAX_INPUT_ROWS

    def teardown(self) -> None:
        if self._con is None:
            return
        if self._pool_key is not None and self._keep:
            return_connection(self._pool_key, self._con)
        else:  # no pool, a large input, or a query that failed or was interrupted
            self._con.close()
        self._con = None


class DuckDbSql(beam.PTransform):
    """Apply one sandboxed DuckDB SELECT to every Arrow table in the input."""

    def __init__(self, sql: str, timeout_seconds: float | None = None,
                 pool_key: str | None = None, chunk_rows: int | None = None) -> None:
        super().__init__()
        check_select(sql)
        self._sql = sql
        self._timeout = timeout_seconds or SQL_TIMEOUT_SECONDS
        self._pool_key = pool_key
        self._chunk_rows = chunk_rows

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        fn = _DuckDbSqlFn(self._sql, self._timeout, self._pool_key, self._chunk_rows)
        return tables | "RunSql" >> beam.ParDo(fn).with_output_types(pa.Table)
