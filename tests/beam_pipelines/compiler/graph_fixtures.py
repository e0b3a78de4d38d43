"""A small buffer and epoch spec for the compiler's tests."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pyarrow as pa

from beam_pipelines.compiler.epoch_graph import EpochSpec
from beam_pipelines.model.definition import Sink
from beam_pipelines.runners.local.buffer import EventBuffer
from transforms.decode import EVENT_TIME, INGESTED_AT, TIMESTAMP

__all__ = ["PIPELINE_ID", "SCHEMA", "epoch_spec", "fill_buffer"]

PIPELINE_ID = "pl_00112233445566ff"
SCHEMA = pa.schema([("n", pa.int64()), ("k", pa.string()),
                    (INGESTED_AT, TIMESTAMP), (EVENT_TIME, TIMESTAMP)])


def fill_buffer(path: str, batches: int, rows: int) -> None:
    """``batches`` requests of ``rows`` events: n counts up, k is "a" or "b", day 1 or 2."""
    buffer = EventBuffer(path, create=True)
    try:
        for b in range(batches):
            ns = list(range(b * rows, (b + 1) * rows))
            times = [datetime(2026, 2, 1 + n % 2, tzinfo=timezone.utc) for n in ns]
            buffer.append(pa.table({"n": ns, "k": ["a" if n % 3 else "b" for n in ns],
                                    INGESTED_AT: pa.array(times, TIMESTAMP),
                                    EVENT_TIME: pa.array(times, TIMESTAMP)}, schema=SCHEMA))
    finally:
        buffer.close()


def epoch_spec(tmp: str, epoch: int, *, sql: str = "SELECT n, k, _event_time FROM events",
               partition_by: str | None = "k={k}") -> EpochSpec:
    """Epoch ``epoch`` covers the buffer's request number ``epoch``."""
    return EpochSpec(pipeline_id=PIPELINE_ID, epoch=epoch, range_start=epoch - 1,
                     range_end=epoch, sql=sql, buffer_path=os.path.join(tmp, "buffer.sqlite"),
                     input_schema=SCHEMA,
                     sink=Sink(uri=os.path.join(tmp, "lake"), partition_by=partition_by),
                     planned_at=datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp(),
                     manifest_path=os.path.join(tmp, f"epoch-{epoch}.manifest.json"))
