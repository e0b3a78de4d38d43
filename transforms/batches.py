"""One accepted ingest batch as a transport message: Arrow IPC bytes plus attributes.

In distributed mode the ingest endpoint publishes each accepted request's
decoded events as one message (Pub/Sub for Dataflow, Kafka for Flink) and
the streaming graph decodes it back into one Arrow table: the data path stays
columnar from the HTTP body to the Parquet file.

A message carries ``BATCH_ID`` (unique per accepted request; the same id when
the same request is published again), which the streaming read de-duplicates
by (Pub/Sub's ``id_label`` on Dataflow, a keyed de-duplication elsewhere),
``PIPELINE_ID``, ``EVENTS`` (the row count, for checks and metrics) and
``EVENT_TIME_MS``: the batch's earliest event time (unix ms; the ingest time
for rows without one). The streaming read takes it as the message's timestamp
(Pub/Sub's ``timestamp_attribute``, Kafka's record timestamp), so the
watermark follows event time: with the publish time instead, a batch whose
events are older than the window plus the allowed lateness was dropped whole,
and the graph would emit slices before its input's timestamp.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc

from transforms.decode import EVENT_TIME, INGESTED_AT

__all__ = ["BATCH_ID", "EVENTS", "EVENT_TIME_MS", "PIPELINE_ID", "conform_batch", "decode_batch",
           "earliest_event_ms", "encode_batch", "new_batch_id"]

BATCH_ID = "batch_id"
PIPELINE_ID = "pipeline_id"
EVENTS = "events"
EVENT_TIME_MS = "event_time_ms"

_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


def new_batch_id() -> str:
    return uuid.uuid4().hex


def encode_batch(table: pa.Table) -> bytes:
    """``table`` as one Arrow IPC stream (zstd-compressed buffers)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_batch(data: bytes) -> pa.Table:
    """The table ``encode_batch`` wrote (zero copy over ``data``)."""
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()


def conform_batch(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A batch as ``schema`` has it, by column name.

    Batches accepted before the schema gained optional fields (additive schema
    evolution, see ``beam_pipelines.model.schema_evolution``) lack those columns:
    they read as nulls. A batch already in ``schema`` is returned as is (zero copy).
    """
    if table.schema.equals(schema):
        return table
    names = set(table.column_names)
    columns = [table.column(f.name) if f.name in names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def earliest_event_ms(table: pa.Table) -> int | None:
    """The smallest event time of ``table`` in unix ms (``_ingested_at`` where a row has none)."""
    times = [table.column(name).cast(pa.timestamp("us")).cast(pa.int64())
             for name in (EVENT_TIME, INGESTED_AT) if name in table.column_names]
    if not times:
        return None
    lowest = pc.min(times[0] if len(times) == 1 else pc.coalesce(*times)).as_py()
    return None if lowest is None else lowest // 1000
