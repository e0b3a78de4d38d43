"""The bounded graph of one epoch, as one composite transform.

    Impulse → EpochSpec → source → DuckDbSql → SplitPartitions → WriteToFiles(sink)

Every element is an Arrow table (the epoch's events, the SQL's result in
chunks, then each chunk's rows per partition), never a single event. The
epoch itself is element data: the graph starts from one :class:`EpochSpec`
element, which the source reads its rows by. Output names are
deterministic and carry the pipeline id (:mod:`beam_pipelines.model.layout`), so
re-running an epoch rewrites the same objects with the same rows, and no
other pipeline's.

Every transform here takes what it needs as constructor arguments or element
data (no table of this process is looked up at run time), so the graph
pickles and could run on any Beam worker. Two values are bound to the epoch
by construction rather than carried as data, because Beam's API offers no
element route for them: the spec the graph starts from, and the
``WriteToFiles`` scratch directory. They are :class:`EpochBound`, which is
how :mod:`beam_pipelines.runners.local.plan_cache` re-binds a compiled plan to the next
epoch without building the graph again.
"""

from __future__ import annotations

import copy
import dataclasses
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
from apache_beam.options.value_provider import ValueProvider

from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local, part_file_name, scratch_directory
from beam_pipelines.model.manifest import FileEntry, write_manifest
from transforms.decode import EVENT_TIME
from transforms.partition import split_partitions
from transforms.sinks import ROW_GROUP_ROWS, SinkFactory, file_extension
from transforms.sql import DuckDbSql

__all__ = ["EPOCH_CHUNK_ROWS", "EpochBound", "EpochGraph", "EpochScratch", "EpochSpec",
           "SplitEpochPartitions", "bound_to_epoch", "manifest_entry"]

logging.getLogger("apache_beam").setLevel(logging.WARNING)

# The SQL's result reaches the split and the file writers in chunks of at
# least this many rows (the Parquet sink's row group size; the sink gathers
# a partition's pieces into whole row groups): an epoch worker holds about
# one chunk of the result, not the whole of it. A 1M-event epoch of the make bench
# workload peaked ~120 MB lower (611 -> 488 MB; benchmarks/README.md, "perf4").
EPOCH_CHUNK_ROWS = ROW_GROUP_ROWS


@dataclass(frozen=True)
class EpochSpec:
    """Everything one epoch's pipeline needs; plain data, cheap to pickle.

    ``buffer_path`` is what the local source reads; ``manifest_path`` is where
    the split step records the files the epoch names (local to the worker).
    """

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


class EpochBound:
    """A value built for one epoch that a compiled plan re-binds to the next one."""

    def for_epoch(self, spec: EpochSpec) -> EpochBound:
        raise NotImplementedError


def bound_to_epoch(fn: Any, spec: EpochSpec) -> Any | None:
    """``fn`` (a DoFn) bound to ``spec``'s epoch, or None when nothing in it is epoch-bound.

    A DoFn is epoch-bound itself (the spec emitter) or holds epoch-bound values
    as attributes (``WriteToFiles``' steps hold its scratch directory); a copy
    with those values re-bound is returned, ``fn`` stays as it is.
    """
    if isinstance(fn, EpochBound):
        return fn.for_epoch(spec)
    rebound = {name: value.for_epoch(spec) for name, value in vars(fn).items()
               if isinstance(value, EpochBound)}
    if not rebound:
        return None
    bound = copy.copy(fn)
    vars(bound).update(rebound)
    return bound


class _EmitEpochSpecFn(beam.DoFn, EpochBound):
    """The graph's one input element: the epoch's spec."""

    def __init__(self, spec: EpochSpec) -> None:
        super().__init__()
        self.spec = spec

    def process(self, _impulse: bytes) -> Iterator[EpochSpec]:
        yield self.spec

    def for_epoch(self, spec: EpochSpec) -> _EmitEpochSpecFn:
        return _EmitEpochSpecFn(spec)


class EpochScratch(ValueProvider, EpochBound):
    """``WriteToFiles``' temp directory: the epoch's scratch (``layout.scratch_directory``)."""

    def __init__(self, spec: EpochSpec) -> None:
        self.path = scratch_directory(spec.sink.uri, spec.pipeline_id, spec.epoch)

    def is_accessible(self) -> bool:
        return True

    def get(self) -> str:
        return self.path

    def for_epoch(self, spec: EpochSpec) -> EpochScratch:
        return EpochScratch(spec)


class _SplitPartitionsFn(beam.DoFn, EpochBound):
    """Split by partition path and record each partition's manifest entry.

    Yields ``((partition, epoch), rows)``: the destination carries the epoch,
    so the file naming needs nothing but its constructor arguments. The SQL
    step hands over its result in chunks (``EPOCH_CHUNK_ROWS``): a partition's
    rows may come in several pieces, all of them written to the partition's
    one file, and its manifest entry adds them up; the manifest is written
    once the epoch's bundle has seen every chunk.

    The spec is a constructor argument, re-bound per epoch by a compiled plan,
    not a side input: a side input would cut the fused stage in two, and the
    epoch's SQL output would be encoded between them (measured: +0.7 µs per
    event in the epoch workers, -17% end to end).
    """

    def __init__(self, spec: EpochSpec) -> None:
        super().__init__()
        self.spec = spec
        self._entries: dict[str, FileEntry] = {}

    def for_epoch(self, spec: EpochSpec) -> _SplitPartitionsFn:
        return _SplitPartitionsFn(spec)

    def start_bundle(self) -> None:
        self._entries = {}

    def process(self, table: pa.Table) -> Iterator[tuple[tuple[str, int], pa.Table]]:
        spec = self.spec
        sink = spec.sink
        fallback = datetime.fromtimestamp(spec.planned_at, timezone.utc)
        extension = file_extension(sink.format, sink.compression)
        for partition, rows in split_partitions(table, sink.partition_by, fallback):
            entry = manifest_entry(spec, partition, rows, extension)
            seen = self._entries.get(partition)
            if seen is None and is_local(sink.uri):
                # Beam's local rename does not create directories and only logs
                # a failed move; make the partition directory first.
                os.makedirs(os.path.join(sink.uri, partition), exist_ok=True)
            self._entries[partition] = entry if seen is None else _add_rows(seen, entry)
            yield (partition, spec.epoch), rows

    def finish_bundle(self) -> None:
        if self._entries:
            write_manifest(self.spec.manifest_path, self._entries.values())


def _add_rows(entry: FileEntry, more: FileEntry) -> FileEntry:
    """One partition's entry after another piece of its rows."""
    def pick(chooser: Any, a: float | None, b: float | None) -> float | None:
        return a if b is None else b if a is None else chooser(a, b)

    return dataclasses.replace(
        entry, rows=entry.rows + more.rows,
        min_event_time=pick(min, entry.min_event_time, more.min_event_time),
        max_event_time=pick(max, entry.max_event_time, more.max_event_time))


class SplitEpochPartitions(beam.PTransform):
    """Arrow tables → ``((partition, epoch), rows)`` by the sink's ``partition_by``.

    ``spec`` is the epoch's: its sink, epoch, planned time (for rows without
    an event time) and manifest path.
    """

    def __init__(self, spec: EpochSpec) -> None:
        super().__init__()
        self._spec = spec

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return tables | beam.ParDo(_SplitPartitionsFn(self._spec)).with_output_types(
            tuple[tuple[str, int], pa.Table])


def manifest_entry(spec: EpochSpec, partition: str, rows: pa.Table,
                   extension: str) -> FileEntry:
    """The manifest's record of the one file the epoch writes for ``partition``."""
    first, last = _event_time_range(rows)
    return FileEntry(path=part_file_name(spec.pipeline_id, spec.epoch, 0, extension, partition),
                     partition=partition, rows=rows.num_rows,
                     min_event_time=first, max_event_time=last)


def _event_time_range(rows: pa.Table) -> tuple[float | None, float | None]:
    """The rows' smallest and largest event time, in unix seconds."""
    if EVENT_TIME not in rows.column_names or rows.num_rows == 0:
        return None, None
    bounds = pc.min_max(rows.column(EVENT_TIME).cast(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return (None if low is None else low / 1e6), (None if high is None else high / 1e6)


class _EpochFileNaming:
    """``fileio`` file naming: deterministic per epoch, partition and shard."""

    def __init__(self, pipeline_id: str, extension: str) -> None:
        self._pipeline_id = pipeline_id
        self._extension = extension

    def __call__(self, window: Any, pane: Any, shard_index: int, total_shards: int,
                 compression: str, destination: tuple[str, int]) -> str:
        partition, epoch = destination
        return part_file_name(self._pipeline_id, epoch, shard_index, self._extension, partition)


def _destination(element: tuple[tuple[str, int], pa.Table]) -> tuple[str, int]:
    return element[0]


class EpochGraph(beam.PTransform):
    """One epoch, from the pipeline's root to its written files (``fileio.FileResult``).

    ``source`` turns the ``EpochSpec`` element into the epoch's events as one
    Arrow table (locally :class:`~beam_pipelines.runners.local.buffer_source.ReadBufferRange`).
    ``sql_pool_key`` lets runs of the same plan in one process share a DuckDB
    connection (``transforms.sql``).
    """

    def __init__(self, spec: EpochSpec, source: beam.PTransform, *,
                 sql_pool_key: str | None = None) -> None:
        super().__init__()
        self._spec = spec
        self._source = source
        self._sql_pool_key = sql_pool_key

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        spec, sink = self._spec, self._spec.sink
        extension = file_extension(sink.format, sink.compression)
        specs = (pbegin
                 | "Impulse" >> beam.Impulse()
                 | "EpochSpec" >> beam.ParDo(_EmitEpochSpecFn(spec)))
        return (
            specs
            | "ReadBufferRange" >> self._source
            | "Sql" >> DuckDbSql(spec.sql, pool_key=self._sql_pool_key,
                                 chunk_rows=EPOCH_CHUNK_ROWS)
            | "SplitPartitions" >> SplitEpochPartitions(spec)
            | "WriteFiles" >> fileio.WriteToFiles(
                path=sink.uri,
                file_naming=_EpochFileNaming(spec.pipeline_id, extension),
                destination=_destination,
                sink=SinkFactory(sink.format, sink.compression),
                temp_directory=EpochScratch(spec),
                # One writer per partition in the epoch's single bundle: no
                # spilling, so exactly one file per partition and a stable name.
                max_writers_per_bundle=1_000_000)
        )
