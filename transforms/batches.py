"""One accepted ingest batch as a transport message: Arrow IPC bytes plus attributes.

In distributed mode the ingest endpoint publishes each accepted request's
decoded events as one message (Pub/Sub for Dataflow, Kafka for Flink) and
the streaming graph decodes it back into one Arrow table: the data path stays
columnar from the HTTP body to the Parquet file.

A message carries ``BATCH_ID`` (unique per accepted request; the same id when
the same request is published again), which the streaming read de-duplicates
by (Pub/Sub's ``id_label`` on Dataflow, a keyed de-duplication elsewhere),
``PIPELINE_ID`` and ``EVENTS`` (the row count, for checks and metrics).
"""

from __future__ import annotations

import uuid

import pyarrow as pa

__all__ = ["BATCH_ID", "EVENTS", "PIPELINE_ID", "decode_batch", "encode_batch", "new_batch_id"]

BATCH_ID = "batch_id"
PIPELINE_ID = "pipeline_id"
EVENTS = "events"

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
