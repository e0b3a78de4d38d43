"""The streaming graph's last two stages: a window pane's table → its files.

    SplitPartitions: table → ((partition, window start, pane index), rows)
    WriteFiles:      global window → fileio.WriteToFiles, one file per key

Names come from :func:`beam_pipelines.model.layout.window_file_name`: a late
pane gets its own file next to the on-time one, and a re-run of a window
and pane writes the same name.

Every decision about windows and lateness is taken once, at
``GroupWindow``; what comes out of it is a final pane that must be written.
So the file key carries the window and pane (``fileio`` names the files it
wrote without spilling with ``pane=None`` anyway), and the rows move to the
global window, fired per element, before ``WriteToFiles``: its internal
``GroupByKey``s then never hold a pane back nor drop a late pane's file as
expired (a runner drops an element whose window is past its allowed
lateness at every ``GroupByKey``, and a late pane may be emitted just before
that limit, to reach the next one after it).

Exactly one file per window, pane and partition: ``GroupWindow`` makes one
table per window and pane, so each destination gets one element, written in
one bundle, and ``max_writers_per_bundle`` is high enough never to spill to
``fileio``'s sharded path. (Fed one element per message instead, the
streaming DirectRunner wrote one file per bundle and window: 6 to 17 files
per one-second window, whatever ``shards`` said.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp

from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local, stream_scratch_directory, window_file_name
from transforms.partition import split_partitions
from transforms.sinks import SinkFactory, file_extension

__all__ = ["METRICS_NAMESPACE", "FileKey", "SplitWindowPartitions", "WriteWindowFiles"]

METRICS_NAMESPACE = "pipeline_do"


# Which file rows go to: (partition path, window start in unix µs, pane index).
# A plain tuple: Beam's deterministic key coder takes it as it is (a NamedTuple
# falls back to a slower coder with a warning).
FileKey = tuple[str, int, int]


class _SplitWindowPartitionsFn(beam.DoFn):
    """Split a window pane's table by partition: ``(FileKey, rows)``.

    Rows without an event time take the window's start for the partition's
    time pattern, so a re-run is stable.
    """

    def __init__(self, sink_uri: str, partition_by: str | None) -> None:
        super().__init__()
        self._sink_uri = sink_uri
        self._partition_by = partition_by
        self._events = Metrics.counter(METRICS_NAMESPACE, "events_out")

    def process(self, table: pa.Table, pane_window: Any = beam.DoFn.WindowParam,
                pane: Any = beam.DoFn.PaneInfoParam
                ) -> Iterator[tuple[FileKey, pa.Table]]:
        start = pane_window.start.micros
        fallback = pane_window.start.to_utc_datetime(has_tz=True)
        for partition, rows in split_partitions(table, self._partition_by, fallback):
            if is_local(self._sink_uri):
                # Beam's local rename does not create directories.
                os.makedirs(os.path.join(self._sink_uri, partition), exist_ok=True)
            self._events.inc(rows.num_rows)
            yield (partition, start, pane.index), rows


class SplitWindowPartitions(beam.PTransform):
    """A window pane's table → ``(FileKey, rows)`` by ``sink.partition_by``."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self._sink = sink

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        fn = _SplitWindowPartitionsFn(self._sink.uri, self._sink.partition_by)
        return tables | beam.ParDo(fn).with_output_types(tuple[FileKey, pa.Table])


class _WindowFileNaming:
    """``fileio`` file naming: deterministic per window, pane, partition and shard."""

    def __init__(self, pipeline_id: str, extension: str) -> None:
        self._pipeline_id = pipeline_id
        self._extension = extension

    def __call__(self, file_window: Any, pane: Any, shard_index: int, total_shards: int,
                 compression: str, destination: FileKey) -> str:
        partition, start, pane_index = destination
        window_start = Timestamp(micros=start).to_utc_datetime(has_tz=True)
        return window_file_name(self._pipeline_id, window_start, pane_index, shard_index,
                                self._extension, partition)


def _destination(element: tuple[FileKey, pa.Table]) -> FileKey:
    return element[0]


class _CountFilesFn(beam.DoFn):
    def __init__(self) -> None:
        super().__init__()
        self._files = Metrics.counter(METRICS_NAMESPACE, "files_written")

    def process(self, result: Any) -> Iterator[Any]:
        self._files.inc()
        yield result


class WriteWindowFiles(beam.PTransform):
    """``fileio.WriteToFiles`` with windowed names; yields (and counts) each finalized file."""

    def __init__(self, pipeline_id: str, sink: Sink) -> None:
        super().__init__()
        self._pipeline_id = pipeline_id
        self._sink = sink

    def expand(self, parts: beam.PCollection) -> beam.PCollection:
        sink = self._sink
        extension = file_extension(sink.format, sink.compression)
        return (parts
                | "GlobalWindow" >> beam.WindowInto(
                    window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING)
                | "WriteToFiles" >> fileio.WriteToFiles(
                    path=sink.uri,
                    file_naming=_WindowFileNaming(self._pipeline_id, extension),
                    destination=_destination,
                    sink=SinkFactory(sink.format, sink.compression),
                    temp_directory=StaticValueProvider(
                        str, stream_scratch_directory(sink.uri, self._pipeline_id)),
                    # Never spill to the sharded path: one file per window,
                    # pane and partition, so its name (shard 0) is stable.
                    max_writers_per_bundle=1_000_000)
                | "CountFiles" >> beam.ParDo(_CountFilesFn()))
