"""Contender: the Beam pipeline a user would write by hand, one element per event.

::

    ReadFromText(ndjson)
    | Map(json.loads)
    | Filter(keep_event)                 # amount > 10
    | Map(transform_event)               # country_uc, amount_gross, ts, dt
    | fileio.WriteToFiles(destination=dt, sink=ParquetSink (zstd))

It runs on Beam's FnApiRunner (the DirectRunner's batch engine), constructed
explicitly so that Beam never tries to download the Prism runner, with
``direct_num_workers`` = cores and ``direct_running_mode='multi_processing'``
(SDK worker subprocesses talking gRPC over loopback; works offline).

Partitioning by date: Beam's Python SDK has ``WriteToParquet`` but no
dynamic destinations for it, so the idiomatic route is
``fileio.WriteToFiles`` with ``destination=lambda e: e['dt']`` and a small
``FileSink`` that writes Parquet with pyarrow. Files are named
``dt=YYYY-MM-DD/part-SSSSS-of-NNNNN.parquet``.

Pitfall found here: ``WriteToFiles`` moves its temporary files to their final
names with ``FileSystems.rename`` and swallows the error when that fails
(logged at DEBUG; only a vague "files may be left orphaned" WARNING
follows). On the local filesystem the rename fails if the
name contains a directory that does not exist yet, so a Hive-style name like
``dt=.../part-0.parquet`` silently leaves every file in the temp directory
and the job "succeeds" with no output. :func:`hive_file_naming` creates the
partition directory before returning the name.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from benchmarks.workload import (
    OUTPUT_SCHEMA,
    PARTITION_COLUMN,
    keep_event,
    transform_event,
)

__all__ = ["ParquetSink", "build_pipeline", "hive_file_naming", "run_beam_naive"]

RUNNING_MODE = "multi_processing"


class ParquetSink(fileio.FileSink):
    """A ``fileio`` sink writing dict records as one zstd Parquet file.

    Rows are buffered and written as a row group every ``rows_per_group``
    records, so memory stays bounded however large a bundle is.
    """

    rows_per_group = 100_000

    def __init__(self, schema: pa.Schema = OUTPUT_SCHEMA, codec: str = "zstd"):
        self._schema = schema
        self._codec = codec
        self._writer: pq.ParquetWriter | None = None
        self._rows: list[dict[str, Any]] = []

    def open(self, fh) -> None:
        self._writer = pq.ParquetWriter(fh, self._schema, compression=self._codec)
        self._rows = []

    def write(self, record: dict[str, Any]) -> None:
        self._rows.append(record)
        if len(self._rows) >= self.rows_per_group:
            self._write_rows()

    def flush(self) -> None:
        if self._writer is None:
            return
        self._write_rows()
        self._writer.close()  # writes the footer; Beam closes the file handle
        self._writer = None

    def _write_rows(self) -> None:
        if self._rows and self._writer is not None:
            # from_pylist ignores keys that are not in the schema (``dt``).
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []


def hive_file_naming(base_dir: str, suffix: str = ".parquet"):
    """``fileio`` naming: ``dt=<destination>/part-SSSSS-of-NNNNN<suffix>``.

    Creates the partition directory first, because ``WriteToFiles`` silently
    drops files whose final directory does not exist (see module docstring).
    """

    def _name(window, pane, shard_index, total_shards, compression, destination):
        partition = f"{PARTITION_COLUMN}={destination}"
        partition_dir = FileSystems.join(base_dir, partition)
        if not FileSystems.exists(partition_dir):
            try:
                FileSystems.mkdirs(partition_dir)
            except OSError:  # another worker created it meanwhile
                pass
        return f"{partition}/part-{shard_index:05d}-of-{total_shards:05d}{suffix}"

    return _name


def build_pipeline(pipeline: beam.Pipeline, dataset_path: str | Path, output_dir: str | Path) -> None:
    """Add the naive read-parse-filter-map-write graph to ``pipeline``."""
    output_dir = str(output_dir)
    _ = (
        pipeline
        | "Read" >> beam.io.ReadFromText(str(dataset_path))
        | "Parse" >> beam.Map(json.loads)
        | "Filter" >> beam.Filter(keep_event)
        | "Transform" >> beam.Map(transform_event)
        | "Write"
        >> fileio.WriteToFiles(
            path=output_dir,
            destination=lambda event: event[PARTITION_COLUMN],
            sink=lambda destination: ParquetSink(),
            file_naming=hive_file_naming(output_dir),
        )
    )


def run_beam_naive(
    dataset_path: str | Path,
    output_dir: str | Path,
    events: int,
    workers: int | None = None,
    running_mode: str = RUNNING_MODE,
) -> dict[str, Any]:
    """Run the naive Beam pipeline over ``dataset_path``; time it end to end.

    The time covers building and running the pipeline (Beam's fixed costs are
    part of what a user pays). Returns ``events``, ``seconds``, ``eps``,
    ``workers``, ``running_mode``, ``runner`` and ``output_dir``.
    """
    workers = workers or os.cpu_count() or 1
    # flags=[]: otherwise PipelineOptions parses this process's sys.argv.
    options = PipelineOptions(
        flags=[],
        direct_num_workers=workers,
        direct_running_mode=running_mode,
    )
    started = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner(), options=options) as pipeline:
        build_pipeline(pipeline, dataset_path, output_dir)
    seconds = time.perf_counter() - started
    return {
        "events": events,
        "seconds": seconds,
        "eps": events / seconds,
        "workers": workers,
        "running_mode": running_mode,
        "runner": "FnApiRunner",
        "output_dir": str(output_dir),
    }
