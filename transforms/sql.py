"""``DuckDbSql``: the Beam step that runs a pipeline's SQL over Arrow tables.

Each element is one Arrow table (an epoch's events, or a window's batch);
each output element is the query's result as one Arrow table. The DuckDB
connection opens in ``setup`` and lives as long as the DoFn instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from transforms.coders import ArrowTableCoder  # noqa: F401  (registers the coder)
from transforms.sandbox import check_select, run_sql, sandboxed_connection

__all__ = ["DuckDbSql"]


class _DuckDbSqlFn(beam.DoFn):
    def __init__(self, sql: str, timeout_seconds: float) -> None:
        self._sql = sql
        self._timeout = timeout_seconds
        self._con: Any = None

    def setup(self) -> None:
        self._con = sandboxed_connection()

    def process(self, events: pa.Table) -> Iterator[pa.Table]:
        result = run_sql(self._con, self._sql, events, self._timeout)
        if result.num_rows:
            yield result

    def teardown(self) -> None:
        if self._con is not None:
            self._con.close()


class DuckDbSql(beam.PTransform):
    """Apply one sandboxed DuckDB SELECT to every Arrow table in the input."""

    def __init__(self, sql: str, timeout_seconds: float = 600.0) -> None:
        super().__init__()
        check_select(sql)
        self._sql = sql
        self._timeout = timeout_seconds

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        fn = _DuckDbSqlFn(self._sql, self._timeout)
        return tables | "RunSql" >> beam.ParDo(fn).with_output_types(pa.Table)
