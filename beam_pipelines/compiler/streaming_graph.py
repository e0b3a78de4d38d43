"""The streaming graph: a pipeline as one unbounded Beam job (Dataflow, Flink).

    source (transport messages) → DecodeBatches → Dedupe → EventTime
      → Window(FixedWindows(roll.interval_seconds), allowed lateness)
      → GroupWindow → Sql (DuckDbSql) → SplitPartitions → WriteFiles (windowed names)

The same transforms as the epoch graph (``transforms.sql.DuckDbSql``,
``transforms.partition``, ``transforms.sinks``), not a copy. Elements are
Arrow tables throughout; a message is one accepted ingest batch
(``transforms.batches``).

The top-level stage names are part of the job's identity: a Dataflow update
maps the running job's transforms onto the new graph by these names, so they
are ``STAGE_NAMES`` and never change silently.

Issue #8: this module's body is being built (helper stream); the names and
``StreamSpec`` are the seam other modules build against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from beam_pipelines.model.definition import Sink

__all__ = ["STAGE_NAMES", "StreamSpec"]

STAGE_NAMES = ("Read", "DecodeBatches", "Dedupe", "EventTime", "Window", "GroupWindow", "Sql",
               "SplitPartitions", "WriteFiles")


@dataclass(frozen=True)
class StreamSpec:
    """Everything the streaming graph needs; plain data, cheap to pickle."""

    pipeline_id: str
    sql: str
    input_schema: pa.Schema
    sink: Sink
    window_seconds: float
    allowed_lateness_seconds: float = 0.0
    pipeline_options: dict[str, Any] = field(default_factory=dict)
