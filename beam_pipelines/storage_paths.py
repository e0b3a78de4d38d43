"""Where an epoch's files live, and what the store says about them.

``pipeline_options`` turns a sink's ``options`` into Beam pipeline options
for its filesystem and applies the process-wide settings Beam needs for it;
``file_sizes`` checks after a run that every file of the manifest exists,
exactly once, and measures it. Beam's ``fileio`` only logs a failed rename,
so this check is what keeps a missing file from being committed.
``epoch_write_error`` turns whatever a failed epoch raised into the
``StorageError`` that the logs, ``last_error`` and ``pipeline.failed``
show: classified, short, and without the sink's secrets.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from beam_pipelines.definition import Sink
from beam_pipelines.errors import StorageError
from beam_pipelines.layout import is_local, join_uri, part_file_name, scratch_directory

__all__ = ["epoch_write_error", "file_sizes", "join_uri", "pipeline_options",
           "remove_remote_scratch"]

_log = logging.getLogger(__name__)

_MAX_DETAIL_CHARS = 300


def pipeline_options(sink: Sink) -> dict[str, Any]:
    """Beam options for the sink's filesystem, with the process made ready for it.

    For gs:// Beam takes endpoint and credentials only from process-wide
    state (``STORAGE_EMULATOR_HOST``, its credential cache): without
    ``activate_sink`` before each epoch it would back off ~25 s looking for
    Google credentials, or write with the previous sink's settings.
    """
    if is_local(sink.uri):
        return {}
    from beam_pipelines.storage import activate_sink, pipeline_options_for_sink

    activate_sink(sink.uri, sink.options)
    return pipeline_options_for_sink(sink.uri, sink.options)


def epoch_write_error(epoch: int, sink: Sink, err: BaseException) -> StorageError:
    """What a failed epoch reports: the sink, the error, whether it is transient; no secrets.

    Error texts from storage clients may quote request URLs, headers or a
    credentials file; they are redacted before they reach ``last_error``,
    the logs and webhooks. ``transient`` says whether retrying can help.
    """
    from beam_pipelines.storage import is_transient_storage_error, redact_secrets

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    detail = redact_secrets(f"{type(err).__name__}: {text}" if text else type(err).__name__,
                            sink.options, _table_secrets(sink))
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[:_MAX_DETAIL_CHARS] + "..."
    transient = is_transient_storage_error(err)
    kind = "transient, retried with backoff" if transient else "retried with backoff"
    error = StorageError(f"epoch {epoch} failed (sink {redact_secrets(sink.uri)}, {kind}): "
                         f"{detail}",
                         {"epoch": epoch, "transient": transient})
    error.transient = transient
    return error


def _table_secrets(sink: Sink) -> list[str]:
    uri = (sink.table or {}).get("catalog_uri")
    if not isinstance(uri, str):
        return []
    try:
        password = urlsplit(uri).password
    except ValueError:
        return []
    return [password] if password else []


def file_sizes(sink: Sink, relative_paths: list[str], epoch: int,
               pipeline_id: str) -> dict[str, Any]:
    """Map each relative path to ``{"uri", "bytes"}``; fail if one is missing."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.sinks import file_extension

    if not is_local(sink.uri):
        FileSystems.set_options(PipelineOptions(flags=[], **pipeline_options(sink)))
    uris = [join_uri(sink.uri, p) for p in relative_paths]
    results = FileSystems.match(uris) if uris else []
    sizes: dict[str, Any] = {}
    for relative, uri, result in zip(relative_paths, uris, results):
        found = [m for m in result.metadata_list if m.path.rstrip("/").endswith(relative)]
        if len(found) != 1:
            raise FileNotFoundError(f"epoch {epoch} output {uri} was not written")
        sizes[relative] = {"uri": uri, "bytes": found[0].size_in_bytes}
    # A second shard for one partition would mean rows the manifest misses.
    extension = file_extension(sink.format, sink.compression)
    extra = [join_uri(sink.uri, part_file_name(pipeline_id, epoch, 1, extension,
                                               p.rpartition("/")[0]))
             for p in relative_paths]
    for result in FileSystems.match(extra) if extra else []:
        if result.metadata_list:
            raise RuntimeError(f"epoch {epoch} wrote more than one shard for a partition")
    return sizes


def sync_local_files(sink: Sink, uris: list[str]) -> None:
    """Make a local sink's epoch files durable before the epoch commits.

    The commit deletes the events from the buffer: files still in the page
    cache would be the only copy, and a power loss would take them. Each file
    is fsynced, then every directory on the way to it from the sink root (the
    renames into place, and partition directories made for this epoch).
    gs:// and s3:// objects are durable once their upload completes.
    """
    if not is_local(sink.uri):
        return
    root = os.path.abspath(sink.uri)
    directories: set[str] = set()
    for uri in uris:
        _fsync_path(uri, os.O_RDONLY)
        directory = os.path.dirname(os.path.abspath(uri))
        while directory.startswith(root) and directory not in directories:
            directories.add(directory)
            directory = os.path.dirname(directory)
    directories.add(os.path.dirname(root))  # the sink root itself may be new
    for directory in sorted(directories, key=len, reverse=True):
        _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_remote_scratch(sink: Sink, pipeline_id: str, epoch: int) -> None:
    """Delete what failed attempts of an epoch left in its scratch directory (gs://, s3://).

    ``WriteToFiles`` removes its temporary objects when a run succeeds, not
    those of an earlier attempt that died after writing them. Called after
    the commit of a retried epoch; a failure here only leaves garbage.
    """
    if is_local(sink.uri):
        return
    from beam_pipelines.storage import delete_files, list_files

    prefix = scratch_directory(sink.uri, pipeline_id, epoch)
    try:
        delete_files([uri for uri, _size in list_files(prefix, sink.options)], sink.options)
    except Exception as err:  # noqa: BLE001 - the epoch is committed; garbage is harmless
        _log.warning("could not remove %s: %s", prefix, type(err).__name__)
