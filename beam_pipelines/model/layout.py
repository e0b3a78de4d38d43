"""Where a pipeline's files go in its sink: the one naming rule.

Every object an epoch writes is named here, and every check that looks for
one asks this module for the name instead of guessing it::

    {sink}/{partition}/part-{epoch:010d}-{shard:05d}-{pipeline_id}.{ext}
    {sink}/_tmp/{pipeline_id}/epoch-{epoch:010d}/...        (scratch, while an epoch runs)

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

__all__ = ["is_local", "join_uri", "part_file_name", "scratch_directory", "scratch_root"]


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


def scratch_root(sink_uri: str) -> str:
    """The sink's scratch area: every pipeline's staged files lie below it."""
    return join_uri(sink_uri, "_tmp")


def scratch_directory(sink_uri: str, pipeline_id: str, epoch: int) -> str:
    """Where ``WriteToFiles`` stages one epoch's files before renaming them into place."""
    return join_uri(scratch_root(sink_uri), f"{pipeline_id}/epoch-{epoch:010d}")
