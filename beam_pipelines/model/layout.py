"""Where a pipeline's files go in its sink: the one naming rule.

Every object an epoch writes is named here, and every check that looks for
one asks this module for the name instead of guessing it::

    {sink}/{partition}/part-{epoch:010d}-{shard:05d}-{pipeline_id}.{ext}
    {sink}/_tmp/{pipeline_id}/epoch-{epoch:010d}/...        (scratch, while an epoch runs)

A streaming job (Dataflow, Flink) names its files by window and pane instead
of epoch, with the same guarantees::

    {sink}/{partition}/part-w{window_start:%Y%m%dT%H%M%SZ}-p{pane:03d}-{shard:05d}-{pipeline_id}.{ext}
    {sink}/_tmp/{pipeline_id}/stream/...                    (scratch of the streaming job)

* A late pane of a window gets its own file next to the on-time one (a
  higher pane index) and never overwrites it; re-running the same window and
  pane (a retried bundle, a job restored from a savepoint) writes the same name.

* Deterministic per epoch: a re-run of an epoch writes the same names, so
  exactly-once holds by overwriting its own earlier attempt.
* The pipeline id (``pl_`` + 16 hex digits, never reused) is in every name:
  a pipeline created with the name of a deleted one, or two pipelines given
  the same sink, never write over each other's files or scratch.
* Within one pipeline the names sort by epoch (zero-padded), then shard.

Local sinks are stored as plain absolute paths (Beam's LocalFileSystem has
no scheme); gs:// and s3:// sinks keep their URI.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["is_local", "join_uri", "part_file_name", "scratch_directory", "scratch_root",
           "stream_scratch_directory", "window_file_name"]


def is_local(uri: str) -> bool:
    """True for a local sink (stored as a plain path), False for gs:// and s3://."""
    return "://" not in uri


def join_uri(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def part_file_name(pipeline_id: str, epoch: int, shard: int, extension: str,
                   partition: str = "") -> str:
    """The relative path of one epoch's file: ``{partition}/part-{epoch}-{shard}-{id}.{ext}``."""
    name = f"part-{epoch:010d}-{shard:05d}-{pipeline_id}.{extension}"
    return f"{partition}/{name}" if partition else name


def window_file_name(pipeline_id: str, window_start: datetime, pane_index: int, shard: int,
                     extension: str, partition: str = "") -> str:
    """The relative path of one window pane's file (a streaming job):
    ``{partition}/part-w{window_start}-p{pane}-{shard}-{id}.{ext}``.

    ``window_start`` is a UTC time, named to the second, with microseconds
    only when it has them (``roll.interval_seconds`` may be as small as 0.1).
    """
    fraction = f".{window_start.microsecond:06d}" if window_start.microsecond else ""
    start = f"{window_start:%Y%m%dT%H%M%S}{fraction}Z"
    name = f"part-w{start}-p{pane_index:03d}-{shard:05d}-{pipeline_id}.{extension}"
    return f"{partition}/{name}" if partition else name


def scratch_root(sink_uri: str) -> str:
    """The sink's scratch area: every pipeline's staged files lie below it."""
    return join_uri(sink_uri, "_tmp")


def scratch_directory(sink_uri: str, pipeline_id: str, epoch: int) -> str:
    """Where ``WriteToFiles`` stages one epoch's files before renaming them into place."""
    return join_uri(scratch_root(sink_uri), f"{pipeline_id}/epoch-{epoch:010d}")


def stream_scratch_directory(sink_uri: str, pipeline_id: str) -> str:
    """Where a streaming job's ``WriteToFiles`` stages its files before renaming them."""
    return join_uri(scratch_root(sink_uri), f"{pipeline_id}/stream")
