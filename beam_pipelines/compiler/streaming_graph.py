"""The streaming graph: a pipeline as one unbounded Beam job (Dataflow, Flink).

    Read (transport messages) → DecodeBatches → Dedupe → EventTime
      → Window(FixedWindows(roll.interval_seconds), allowed lateness)
      → GroupWindow → Sql (DuckDbSql) → SplitPartitions → WriteFiles (windowed names)

The same transforms as the epoch graph (``transforms.sql.DuckDbSql``,
``transforms.partition``, ``transforms.sinks``), not a copy. Elements are
Arrow tables throughout; a message is one accepted ingest batch
(``transforms.batches``), and no step runs Python per event.

The element contract of ``Read``: ``(batch_id, Arrow IPC bytes)`` pairs
(:mod:`beam_pipelines.compiler.streaming_sources` makes both transports
produce them). The last two stages, and the file names, are in
:mod:`beam_pipelines.compiler.window_files`.

The top-level stage names are part of the job's identity: a Dataflow update
maps the running job's transforms onto the new graph by these names, so they
are ``STAGE_NAMES`` and never change silently. :func:`build_streaming_pipeline`
applies them at the pipeline's root, so they are the job's top-level names.

Late data: a window fires once when the watermark passes its end and again
for each late batch within ``allowed_lateness_seconds`` (discarding, so each
pane's file holds only its own rows; it is named by its pane and never
overwrites the on-time file). Rows later than that are dropped by Beam at
``GroupWindow``; Beam reports no count of them, so the API layer that knows
what it published must count them itself.

Everything the steps need is a constructor argument, so the graph pickles
and runs on any Beam worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, userstate, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_pipelines.compiler.streaming_sources import kafka_source, pubsub_source
from beam_pipelines.compiler.window_files import (
    METRICS_NAMESPACE,
    SplitWindowPartitions,
    WriteWindowFiles,
)
from beam_pipelines.model.definition import Sink
from transforms.batches import conform_batch, decode_batch
from transforms.decode import EVENT_TIME, INGESTED_AT
from transforms.sql import DuckDbSql

__all__ = ["DEDUPE_SECONDS", "METRICS_NAMESPACE", "STAGE_NAMES", "StreamSpec", "StreamingGraph",
           "build_streaming_pipeline", "kafka_source", "pubsub_source"]

STAGE_NAMES = ("Read", "DecodeBatches", "Dedupe", "EventTime", "Window", "GroupWindow", "Sql",
               "SplitPartitions", "WriteFiles")
# How long a batch id is remembered: a publisher's retry or a transport's
# redelivery comes within minutes (Pub/Sub's ack deadline is at most 600 s).
DEDUPE_SECONDS = 600.0


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


class _DecodeBatchFn(beam.DoFn):
    """``(batch_id, IPC bytes)`` → ``(batch_id, table)`` in the job's input schema: a
    batch published before the schema gained optional fields gets them as nulls."""

    def __init__(self, schema: pa.Schema) -> None:
        super().__init__()
        self._schema = schema

    def process(self, message: tuple[str, bytes]) -> Iterator[tuple[str, pa.Table]]:
        batch_id, data = message
        yield batch_id, conform_batch(decode_batch(data), self._schema)


class _DropRepublishedFn(beam.DoFn):
    """Keep the first batch of each id; forget the id ``horizon`` seconds later.

    Keyed state (one flag per batch id in the global window) and an event-time
    timer: what every portable runner (the DirectRunner, Flink, Dataflow)
    supports, unlike a transport-specific de-duplication.
    """

    SEEN = userstate.ReadModifyWriteStateSpec("seen", beam.coders.BooleanCoder())
    EXPIRY = userstate.TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, horizon_seconds: float) -> None:
        super().__init__()
        self._horizon = Duration(seconds=horizon_seconds)
        self._dropped = Metrics.counter(METRICS_NAMESPACE, "batches_republished")

    def process(self, element: tuple[str, pa.Table],
                timestamp: Any = beam.DoFn.TimestampParam,
                seen: Any = beam.DoFn.StateParam(SEEN),
                expiry: Any = beam.DoFn.TimerParam(EXPIRY)) -> Iterator[tuple[str, pa.Table]]:
        if seen.read():
            self._dropped.inc()
            return
        seen.write(True)
        expiry.set(timestamp + self._horizon)
        yield element

    @userstate.on_timer(EXPIRY)
    def forget(self, seen: Any = beam.DoFn.StateParam(SEEN)) -> None:
        seen.clear()


def _event_micros(table: pa.Table, fallback: Timestamp) -> pa.Array:
    """Each row's event time in unix microseconds: ``_event_time``, else
    ``_ingested_at``, else the message's own timestamp."""
    times = pa.nulls(table.num_rows, pa.int64())
    for name in (INGESTED_AT, EVENT_TIME):  # the later one wins where it is set
        if name in table.column_names:
            column = pc.cast(table.column(name).combine_chunks(),
                             pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64())
            times = pc.coalesce(column, times)
    return pc.fill_null(times, fallback.micros)


def _with_event_time(table: pa.Table, times: pa.Array) -> pa.Table:
    """``table`` whose ``_event_time`` is set on every row (the SQL's input
    relation always has it: the event time, else the ingest time)."""
    column = times.cast(pa.timestamp("us", tz="UTC"))
    if EVENT_TIME not in table.column_names:
        return table.append_column(pa.field(EVENT_TIME, column.type), column)
    if table.column(EVENT_TIME).null_count == 0:
        return table
    position = table.column_names.index(EVENT_TIME)
    return table.set_column(position, pa.field(EVENT_TIME, column.type), column)


class _SliceByWindowFn(beam.DoFn):
    """Split a batch by the fixed window its rows' event times fall into.

    Each slice is emitted at its earliest event time, so ``Window`` puts it
    in its window. Rows without an event time get their ingest time as
    ``_event_time`` (the relation the SQL sees always has it). Vectorized: one
    pass of Arrow compute per batch, one Python step per window the batch
    spans (usually one).

    Lateness is judged against the watermark of the transport's timestamps:
    a slice emitted at an event time older than the watermark is late, and
    dropped past the allowed lateness. With Pub/Sub's publish time as the
    message timestamp, that is an event more than the window and the
    lateness older than its publishing; a ``timestamp_attribute`` holding the
    batch's earliest event time (:func:`pubsub_source`) makes the watermark
    follow event time instead.
    """

    def __init__(self, window_seconds: float) -> None:
        super().__init__()
        self._window_micros = round(window_seconds * 1_000_000)

    def process(self, element: tuple[str, pa.Table],
                timestamp: Any = beam.DoFn.TimestampParam
                ) -> Iterator[window.TimestampedValue]:
        _batch_id, table = element
        if table.num_rows == 0:
            return
        size = self._window_micros
        times = _event_micros(table, timestamp)
        table = _with_event_time(table, times)
        earliest, latest = (v.as_py() for v in pc.min_max(times).values())
        if earliest // size == latest // size:  # the common case: one window
            yield window.TimestampedValue(table, Timestamp(micros=earliest))
            return
        # floor, not truncation, so that times before 1970 land right too
        # (float64 holds unix microseconds exactly for ±285 years)
        starts = pc.multiply(pc.floor(pc.divide(times.cast(pa.float64()), float(size)))
                             .cast(pa.int64()), size)
        order = pc.sort_indices(starts)  # stable: rows keep their order within a window
        ordered, ordered_times = table.take(order), times.take(order)
        offset = 0
        for count in pc.value_counts(starts.take(order)).field("counts").to_pylist():
            earliest = pc.min(ordered_times.slice(offset, count)).as_py()
            yield window.TimestampedValue(ordered.slice(offset, count), Timestamp(micros=earliest))
            offset += count


def _key_by(table: pa.Table, key: str) -> tuple[str, pa.Table]:
    return key, table


def _concatenate(element: tuple[str, Iterable[pa.Table]]) -> pa.Table:
    return pa.concat_tables(list(element[1]), promote_options="default")


class _GroupWindow(beam.PTransform):
    """All of a window's slices into one table per window and pane (one key)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self._key = key

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return (tables
                | "Key" >> beam.Map(_key_by, self._key).with_output_types(tuple[str, pa.Table])
                | "Group" >> beam.GroupByKey()
                | "Concatenate" >> beam.Map(_concatenate).with_output_types(pa.Table))


class StreamingGraph(beam.PTransform):
    """A pipeline's streaming job, from its transport to its written files (``FileResult``).

    ``source`` is a PTransform from the pipeline's root yielding
    ``(batch_id, Arrow IPC bytes)`` pairs (:func:`pubsub_source`,
    :func:`kafka_source`, or a ``TestStream`` in tests).
    """

    def __init__(self, spec: StreamSpec, source: beam.PTransform, *,
                 dedupe_seconds: float = DEDUPE_SECONDS) -> None:
        super().__init__()
        if spec.window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {spec.window_seconds}")
        if spec.allowed_lateness_seconds < 0:
            raise ValueError("allowed_lateness_seconds must be >= 0, got "
                             f"{spec.allowed_lateness_seconds}")
        self._spec = spec
        self._source = source
        self._dedupe_seconds = dedupe_seconds

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        spec = self._spec
        stages: list[beam.PTransform] = [
            self._source,
            beam.ParDo(_DecodeBatchFn(spec.input_schema)).with_output_types(tuple[str, pa.Table]),
            beam.ParDo(_DropRepublishedFn(self._dedupe_seconds))
                .with_output_types(tuple[str, pa.Table]),
            beam.ParDo(_SliceByWindowFn(spec.window_seconds)).with_output_types(pa.Table),
            beam.WindowInto(window.FixedWindows(spec.window_seconds),
                            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                            allowed_lateness=Duration(seconds=spec.allowed_lateness_seconds),
                            accumulation_mode=trigger.AccumulationMode.DISCARDING),
            _GroupWindow(spec.pipeline_id),
            DuckDbSql(spec.sql),
            SplitWindowPartitions(spec.sink),
            WriteWindowFiles(spec.pipeline_id, spec.sink),
        ]
        current: Any = pbegin
        for name, stage in zip(STAGE_NAMES, stages, strict=True):
            current = current | name >> stage
        return current


def build_streaming_pipeline(pipeline: beam.Pipeline, spec: StreamSpec,
                             source: beam.PTransform) -> beam.PCollection:
    """Apply the streaming graph to ``pipeline`` with its stages at the root.

    Expanding in place (rather than ``pipeline | StreamingGraph(...)``) keeps
    the stage names top-level ("Read", ..., "WriteFiles"), the names a
    Dataflow update's ``transform_name_mapping`` and Flink's savepoint state
    are matched by.
    """
    return StreamingGraph(spec, source).expand(beam.pvalue.PBegin(pipeline))
