"""Compile a pipeline definition into Beam transforms.

The local runner builds one bounded pipeline per epoch:

    Impulse → ReadBufferRange → DuckDbSql → SplitPartitions → WriteToFiles(sink)

Every element is an Arrow table (the whole epoch, then one per partition),
never a single event. Output names are deterministic:
``{sink}/{partition}/part-{epoch:010d}-{shard:05d}.{ext}``, so re-running an
epoch rewrites the same objects with the same rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipelines.buffer import EventBuffer
from beam_pipelines.definition import Sink
from transforms.decode import EVENT_TIME
from transforms.partition import split_partitions
from transforms.sinks import file_extension, make_sink
from transforms.sql import DuckDbSql

__all__ = ["EpochSpec", "ReadBufferRange", "build_epoch_pipeline", "epoch_file_name",
           "run_epoch_pipeline"]

logging.getLogger("apache_beam").setLevel(logging.WARNING)


@dataclass(frozen=True)
class EpochSpec:
    """Everything one epoch's pipeline needs; plain data, cheap to pickle."""

    pipeline_id: str
    epoch: int
    range_start: int
    range_end: int
    sql: str
    buffer_path: str
    input_schema: pa.Schema
    sink: Sink
    planned_at: float
    manifest_path: str
    pipeline_options: dict[str, Any] = field(default_factory=dict)


def epoch_file_name(epoch: int, shard: int, extension: str, partition: str = "") -> str:
    name = f"part-{epoch:010d}-{shard:05d}.{extension}"
    return f"{partition}/{name}" if partition else name


class _ReadBufferRangeFn(beam.DoFn):
    def __init__(self, path: str, after_seq: int, through_seq: int, schema: pa.Schema) -> None:
        self._path = path
        self._range = (after_seq, through_seq)
        self._schema = schema

    def process(self, _impulse: bytes) -> Iterator[pa.Table]:
        buffer = EventBuffer(self._path)
        try:
            yield buffer.read_range(*self._range, self._schema)
        finally:
            buffer.close()


class ReadBufferRange(beam.PTransform):
    """Read buffer rows ``(after_seq, through_seq]`` as one Arrow table."""

    def __init__(self, path: str, after_seq: int, through_seq: int, schema: pa.Schema) -> None:
        super().__init__()
        if through_seq < after_seq:
            raise ValueError(f"empty or reversed range ({after_seq}, {through_seq}]")
        self._fn = _ReadBufferRangeFn(path, after_seq, through_seq, schema)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | beam.Impulse() | beam.ParDo(self._fn).with_output_types(pa.Table)


class _SplitPartitionsFn(beam.DoFn):
    """Split by partition path and record each partition's manifest entry."""

    def __init__(self, spec: EpochSpec) -> None:
        self._pattern = spec.sink.partition_by
        self._fallback = datetime.fromtimestamp(spec.planned_at, timezone.utc)
        self._root = spec.sink.uri
        self._manifest_path = spec.manifest_path
        self._extension = file_extension(spec.sink.format, spec.sink.compression)
        self._epoch = spec.epoch

    def process(self, table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
        entries = []
        for partition, rows in split_partitions(table, self._pattern, self._fallback):
            if "://" not in self._root:
                # Beam's local rename does not create directories and only logs
                # a failed move; make the partition directory first.
                os.makedirs(os.path.join(self._root, partition), exist_ok=True)
            entries.append({
                "partition": partition,
                "path": epoch_file_name(self._epoch, 0, self._extension, partition),
                "rows": rows.num_rows,
                **_event_time_range(rows),
            })
            yield partition, rows
        with open(self._manifest_path, "w") as fh:
            json.dump(entries, fh)


def _event_time_range(rows: pa.Table) -> dict[str, float | None]:
    if EVENT_TIME not in rows.column_names or rows.num_rows == 0:
        return {"min_event_time": None, "max_event_time": None}
    bounds = pc.min_max(rows.column(EVENT_TIME).cast(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return {"min_event_time": None if low is None else low / 1e6,
            "max_event_time": None if high is None else high / 1e6}


class _EpochFileNaming:
    """``fileio`` file naming: deterministic per epoch, partition and shard."""

    def __init__(self, epoch: int, extension: str) -> None:
        self._epoch = epoch
        self._extension = extension

    def __call__(self, window: Any, pane: Any, shard_index: int, total_shards: int,
                 compression: str, destination: str) -> str:
        return epoch_file_name(self._epoch, shard_index, self._extension, destination)


class _SinkFactory:
    def __init__(self, format_name: str, compression: str) -> None:
        self._format = format_name
        self._compression = compression

    def __call__(self, destination: str) -> fileio.FileSink:
        return make_sink(self._format, self._compression)


def _destination(element: tuple[str, pa.Table]) -> str:
    return element[0]


def build_epoch_pipeline(spec: EpochSpec) -> beam.Pipeline:
    sink = spec.sink
    options = PipelineOptions(flags=[], **spec.pipeline_options)
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
    _ = (
        pipeline
        | "ReadBufferRange" >> ReadBufferRange(spec.buffer_path, spec.range_start, spec.range_end,
                                               spec.input_schema)
        | "Sql" >> DuckDbSql(spec.sql)
        | "SplitPartitions" >> beam.ParDo(_SplitPartitionsFn(spec)).with_output_types(
            tuple[str, pa.Table])
        | "WriteFiles" >> fileio.WriteToFiles(
            path=sink.uri,
            file_naming=_EpochFileNaming(spec.epoch, file_extension(sink.format, sink.compression)),
            destination=_destination,
            sink=_SinkFactory(sink.format, sink.compression),
            temp_directory=StaticValueProvider(str, f"{sink.uri}/_tmp/epoch-{spec.epoch:010d}"),
            # One writer per partition in the epoch's single bundle: no
            # spilling, so exactly one file per partition and a stable name.
            max_writers_per_bundle=1_000_000)
    )
    return pipeline


def run_epoch_pipeline(spec: EpochSpec) -> list[dict[str, Any]]:
    """Run one epoch's pipeline; return its manifest (partition, path, rows, times)."""
    if os.path.exists(spec.manifest_path):
        os.remove(spec.manifest_path)
    build_epoch_pipeline(spec).run().wait_until_finish()
    if not os.path.exists(spec.manifest_path):
        return []  # the SQL kept no row
    with open(spec.manifest_path) as fh:
        entries: list[dict[str, Any]] = json.load(fh)
    os.remove(spec.manifest_path)
    return entries
