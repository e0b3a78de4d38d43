"""Batches, a stream spec and a file reader for the streaming graph's tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipelines.compiler.streaming_graph import StreamSpec
from beam_pipelines.model.definition import Sink
from transforms.batches import encode_batch
from transforms.decode import EVENT_TIME, INGESTED_AT, TIMESTAMP

__all__ = ["PIPELINE_ID", "SCHEMA", "SQL", "at", "batch", "read_files", "stream_spec"]

PIPELINE_ID = "pl_00aabbccddeeff00"
SCHEMA = pa.schema([("n", pa.int64()), ("k", pa.string()),
                    (INGESTED_AT, TIMESTAMP), (EVENT_TIME, TIMESTAMP)])
# A WHERE and a computed column: the graph runs the pipeline's SQL.
SQL = "SELECT n, k, n * 10 AS tens, _event_time FROM events WHERE n <> 13"


def at(base: datetime, seconds: float) -> datetime:
    return base + timedelta(seconds=seconds)


def batch(rows: Sequence[tuple[int, datetime | None]], *, ingested: datetime,
          event_time: bool = True) -> bytes:
    """One transport message: rows ``(n, event time)``; k is "x" for even n, "y" for odd.

    ``event_time=False`` leaves the ``_event_time`` column out (the graph then
    uses ``_ingested_at``).
    """
    ns = [n for n, _ in rows]
    columns: dict[str, Any] = {
        "n": pa.array(ns, pa.int64()),
        "k": pa.array(["x" if n % 2 == 0 else "y" for n in ns]),
        INGESTED_AT: pa.array([ingested] * len(rows), TIMESTAMP),
    }
    if event_time:
        columns[EVENT_TIME] = pa.array([t for _, t in rows], TIMESTAMP)
    return encode_batch(pa.table(columns))


def stream_spec(sink_uri: str, *, window_seconds: float = 60.0,
                allowed_lateness_seconds: float = 0.0, sql: str = SQL,
                partition_by: str | None = "h=%H/k={k}",
                options: dict[str, Any] | None = None) -> StreamSpec:
    return StreamSpec(pipeline_id=PIPELINE_ID, sql=sql, input_schema=SCHEMA,
                      sink=Sink(uri=sink_uri, partition_by=partition_by, options=options or {}),
                      window_seconds=window_seconds,
                      allowed_lateness_seconds=allowed_lateness_seconds)


def read_files(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    """``{path relative to root: rows sorted}`` of every Parquet file outside ``_tmp``.

    Each file is opened with pyarrow first (a file without its footer fails
    there with its name), then read with DuckDB's ``read_parquet``.
    """
    found: dict[str, list[tuple[Any, ...]]] = {}
    with duckdb.connect() as con:
        for path in sorted(root.rglob("*.parquet")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith("_tmp/"):
                continue
            pq.ParquetFile(path).close()  # raises for a truncated file
            found[relative] = con.execute(
                "SELECT n, k, tens, epoch_us(_event_time) FROM read_parquet(?) ORDER BY n",
                [str(path)]).fetchall()
    return found


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
