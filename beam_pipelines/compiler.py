"""Compile a pipeline definition into Beam transforms.

The local runner builds one bounded pipeline per epoch:

    Impulse → ReadBufferRange → DuckDbSql → SplitPartitions → WriteToFiles(sink)

Every element is an Arrow table (the whole epoch, then one per partition),
never a single event. Output names are deterministic and carry the
pipeline id (:mod:`beam_pipelines.model.layout`), so re-running an epoch rewrites
the same objects with the same rows, and no other pipeline's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.value_provider import ValueProvider
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import environments

from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local, part_file_name, scratch_directory
from beam_pipelines.model.manifest import FileEntry, read_manifest, write_manifest
from beam_pipelines.runners.local.buffer import EventBuffer
from transforms.decode import EVENT_TIME
from transforms.partition import split_partitions
from transforms.sinks import file_extension, make_sink
from transforms.sql import DuckDbSql

__all__ = ["EpochSpec", "ReadBufferRange", "build_epoch_pipeline", "run_epoch_pipeline"]

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


# The epoch each compiled plan is running right now in this process. A plan
# is compiled once per pipeline, SQL version and sink and re-run for every
# epoch (building and serializing a Beam graph costs ~0.3 s, more than the
# work of a small epoch); its DoFns look up the epoch here. This needs the
# FnApiRunner's in-process (in_memory) workers, which the epoch plan uses.
_RUNNING: dict[str, EpochSpec] = {}


def _running(token: str) -> EpochSpec:
    try:
        return _RUNNING[token]
    except KeyError:
        raise RuntimeError("an epoch plan ran outside run_epoch_pipeline") from None


class _ReadBufferRangeFn(beam.DoFn):
    def __init__(self, token: str) -> None:
        self._token = token

    def process(self, _impulse: bytes) -> Iterator[pa.Table]:
        spec = _running(self._token)
        buffer = EventBuffer(spec.buffer_path)
        try:
            yield buffer.read_range(spec.range_start, spec.range_end, spec.input_schema)
        finally:
            buffer.close()


class ReadBufferRange(beam.PTransform):
    """Read the running epoch's buffer rows ``(range_start, range_end]`` as one Arrow table."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._fn = _ReadBufferRangeFn(token)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | beam.Impulse() | beam.ParDo(self._fn).with_output_types(pa.Table)


class _SplitPartitionsFn(beam.DoFn):
    """Split by partition path and record each partition's manifest entry."""

    def __init__(self, token: str) -> None:
        self._token = token

    def process(self, table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
        spec = _running(self._token)
        sink = spec.sink
        fallback = datetime.fromtimestamp(spec.planned_at, timezone.utc)
        extension = file_extension(sink.format, sink.compression)
        entries = []
        for partition, rows in split_partitions(table, sink.partition_by, fallback):
            if is_local(sink.uri):
                # Beam's local rename does not create directories and only logs
                # a failed move; make the partition directory first.
                os.makedirs(os.path.join(sink.uri, partition), exist_ok=True)
            first, last = _event_time_range(rows)
            entries.append(FileEntry(
                path=part_file_name(spec.pipeline_id, spec.epoch, 0, extension, partition),
                partition=partition, rows=rows.num_rows,
                min_event_time=first, max_event_time=last))
            yield partition, rows
        write_manifest(spec.manifest_path, entries)


def _event_time_range(rows: pa.Table) -> tuple[float | None, float | None]:
    """The rows' smallest and largest event time, in unix seconds."""
    if EVENT_TIME not in rows.column_names or rows.num_rows == 0:
        return None, None
    bounds = pc.min_max(rows.column(EVENT_TIME).cast(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return (None if low is None else low / 1e6), (None if high is None else high / 1e6)


class _EpochFileNaming:
    """``fileio`` file naming: deterministic per epoch, partition and shard."""

    def __init__(self, token: str, extension: str) -> None:
        self._token = token
        self._extension = extension

    def __call__(self, window: Any, pane: Any, shard_index: int, total_shards: int,
                 compression: str, destination: str) -> str:
        spec = _running(self._token)
        return part_file_name(spec.pipeline_id, spec.epoch, shard_index, self._extension,
                              destination)


class _EpochTempDirectory(ValueProvider):
    """``WriteToFiles``'s temp directory, per running epoch."""

    def __init__(self, token: str) -> None:
        self._token = token

    def is_accessible(self) -> bool:
        return True

    def get(self) -> str:
        spec = _running(self._token)
        return scratch_directory(spec.sink.uri, spec.pipeline_id, spec.epoch)


class _SinkFactory:
    def __init__(self, format_name: str, compression: str) -> None:
        self._format = format_name
        self._compression = compression

    def __call__(self, destination: str) -> fileio.FileSink:
        return make_sink(self._format, self._compression)


def _destination(element: tuple[str, pa.Table]) -> str:
    return element[0]


def build_epoch_pipeline(spec: EpochSpec, token: str) -> beam.Pipeline:
    """The epoch plan; its DoFns take the epoch from ``_RUNNING[token]`` when run."""
    sink = spec.sink
    options = PipelineOptions(flags=[], direct_running_mode="in_memory", **spec.pipeline_options)
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
    _ = (
        pipeline
        | "ReadBufferRange" >> ReadBufferRange(token)
        | "Sql" >> DuckDbSql(spec.sql, pool_key=token)
        | "SplitPartitions" >> beam.ParDo(_SplitPartitionsFn(token)).with_output_types(
            tuple[str, pa.Table])
        | "WriteFiles" >> fileio.WriteToFiles(
            path=sink.uri,
            file_naming=_EpochFileNaming(token, file_extension(sink.format, sink.compression)),
            destination=_destination,
            sink=_SinkFactory(sink.format, sink.compression),
            temp_directory=_EpochTempDirectory(token),
            # One writer per partition in the epoch's single bundle: no
            # spilling, so exactly one file per partition and a stable name.
            max_writers_per_bundle=1_000_000)
    )
    return pipeline


@dataclass(frozen=True)
class _CompiledPlan:
    proto: Any
    options: PipelineOptions


_PLANS: dict[str, _CompiledPlan] = {}
_MAX_PLANS = 32


def _plan_for(spec: EpochSpec) -> tuple[str, _CompiledPlan]:
    """The compiled plan for this pipeline, SQL and sink: built once per process."""
    key = json.dumps([spec.pipeline_id, spec.sql, asdict(spec.sink), str(spec.input_schema),
                      spec.pipeline_options], sort_keys=True, default=str)
    token = hashlib.sha256(key.encode()).hexdigest()[:24]
    plan = _PLANS.get(token)
    if plan is None:
        pipeline = build_epoch_pipeline(spec, token)
        proto = pipeline.to_runner_api(
            default_environment=environments.EmbeddedPythonEnvironment.default())
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)))
        plan = _PLANS[token] = _CompiledPlan(proto, pipeline.options)
    return token, plan


def run_epoch_pipeline(spec: EpochSpec) -> list[FileEntry]:
    """Run one epoch's pipeline; return its manifest (partition, path, rows, times)."""
    if os.path.exists(spec.manifest_path):
        os.remove(spec.manifest_path)
    token, plan = _plan_for(spec)
    FileSystems.set_options(plan.options)  # process-wide: another sink may have run last
    _RUNNING[token] = spec
    try:
        FnApiRunner().run_via_runner_api(plan.proto, plan.options).wait_until_finish()
    finally:
        _RUNNING.pop(token, None)
    if not os.path.exists(spec.manifest_path):
        return []  # the SQL kept no row
    # The manifest file stays: run_epoch removes it once committed.
    return read_manifest(spec.manifest_path)
