"""Reference contender: DuckDB alone, NDJSON file to partitioned Parquet.

One statement does the whole job on all cores::

    COPY (WITH events AS (SELECT * FROM read_ndjson(...)) <TRANSFORM_SQL>)
    TO '<out>' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (dt))

This is the ceiling for a single machine: no HTTP, no buffer, no Beam.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import duckdb

from benchmarks.workload import PARTITION_COLUMN, TRANSFORM_SQL, duckdb_source

__all__ = ["run_duckdb"]


def run_duckdb(
    dataset_path: str | Path,
    output_dir: str | Path,
    events: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """Transform ``dataset_path`` into ``output_dir`` with DuckDB; time it.

    ``events`` is the number of input events (for events/s). Returns a dict
    with ``events``, ``seconds``, ``eps``, ``threads`` and ``output_dir``.
    """
    threads = threads or os.cpu_count() or 1
    output_dir = Path(output_dir)
    statement = (
        f"COPY (WITH events AS (SELECT * FROM {duckdb_source(dataset_path)}) {TRANSFORM_SQL}) "
        f"TO '{str(output_dir).replace(chr(39), chr(39) * 2)}' "
        f"(FORMAT parquet, COMPRESSION zstd, PARTITION_BY ({PARTITION_COLUMN}))"
    )
    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {int(threads)}")
        con.execute("SET enable_progress_bar = false")
        started = time.perf_counter()
        con.execute(statement)
        seconds = time.perf_counter() - started
    finally:
        con.close()
    return {
        "events": events,
        "seconds": seconds,
        "eps": events / seconds,
        "threads": threads,
        "output_dir": str(output_dir),
    }
