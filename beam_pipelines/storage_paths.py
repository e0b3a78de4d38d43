"""Where an epoch's files live, and what the store says about them.

``pipeline_options`` turns a sink's ``options`` into Beam pipeline options
for its filesystem and applies the process-wide settings Beam needs for it;
``file_sizes`` checks after a run that every file of the manifest exists,
exactly once, and measures it. Beam's ``fileio`` only logs a failed rename,
so this check is what keeps a missing file from being committed.
``classify_epoch_error`` turns whatever a failed epoch raised into the
``EpochError`` that the logs, ``last_error`` and ``pipeline.failed``
show: classified, short, without the sink's secrets or server paths.
``discard_attempt`` removes what a failed attempt left in the sink.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any
from urllib.parse import urlsplit

from beam_pipelines.errors import EPOCH_ERROR_CODES, EpochError, SinkError
from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local, join_uri, part_file_name, scratch_directory

__all__ = ["classify_epoch_error", "discard_attempt", "file_sizes", "join_uri",
           "pipeline_options", "remove_scratch"]

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


def classify_epoch_error(epoch: int, sink: Sink, err: BaseException) -> EpochError:
    """What a failed epoch attempt reports: a code, a short message, whether it is transient.

    The one place an epoch's failure is classified (the job manager adds only
    ``WORKER_DIED`` and ``INTERNAL_ERROR`` for what never reached here):

    * ``SQL_ERROR``: DuckDB (or the sandbox) failed on the events; DuckDB's
      own first line tells the user what to fix with ``transform``.
    * ``SINK_UNAVAILABLE``: :func:`~beam_pipelines.storage.is_transient_storage_error`
      says waiting can help (unreachable, timeouts, 5xx, 429).
    * ``SINK_WRITE_FAILED``: anything else on the way to the files.

    The message goes to ``last_error``, the logs and webhooks: no secrets, no
    server path, no exception class or chain. The full error, redacted, goes
    to the server log only.
    """
    from beam_pipelines.storage import is_transient_storage_error, redact_secrets

    secrets = _table_secrets(sink)
    _log.warning("epoch %s of sink %s failed", epoch, redact_secrets(sink.uri, sink.options),
                 exc_info=err)
    where = redact_secrets(sink.uri, sink.options, secrets) if "://" in sink.uri else "local"
    sql = _sql_failure(err)
    if sql is not None:
        text = _user_text(redact_secrets(sql, sink.options, secrets)) or "the query failed"
        return EpochError("SQL_ERROR", text, epoch=epoch)  # the sink played no part
    if is_transient_storage_error(err):
        return SinkError("SINK_UNAVAILABLE", EPOCH_ERROR_CODES["SINK_UNAVAILABLE"], epoch=epoch,
                         transient=True, where=where)
    reason = _user_text(redact_secrets(_first_line(err), sink.options, secrets))
    return SinkError("SINK_WRITE_FAILED", EPOCH_ERROR_CODES["SINK_WRITE_FAILED"]
                     + (f": {reason}" if reason else ""), epoch=epoch, where=where)


def _sql_failure(err: BaseException) -> str | None:
    """DuckDB's message if the SQL step failed, else None.

    Beam re-raises a DoFn's error with its own type and the step's name
    appended (``[while running 'Sql/RunSql']``), or as a RuntimeError carrying
    only the text: both are recognised.
    """
    from beam_pipelines.storage import walk_exceptions
    from transforms.sandbox import SqlError

    for e in walk_exceptions(err):
        module = type(e).__module__ or ""
        if isinstance(e, SqlError) or module.startswith(("duckdb", "_duckdb")) \
                or "while running 'Sql/" in str(e):
            return _first_line(e)
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


# Absolute paths (not the path part of a URL) and file:// URIs.
_PATH = re.compile(r"file://\S*|(?<![\w:/.])/(?:[^\s'\"/]+/)*[^\s'\",;)\]]*")
_CLASS_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception)\s*:\s*)+")
_ERRNO = re.compile(r"\[Errno (\d+)\]")
_BEAM_STEP = re.compile(r"\s*\[while running '[^']*'\]")


def _user_text(text: str) -> str:
    """A failure's text as users may see it: no paths, class names or Beam step names."""
    errno_match = _ERRNO.search(text)
    if errno_match:
        return os.strerror(int(errno_match.group(1)))
    text = _BEAM_STEP.sub("", _CLASS_PREFIX.sub("", text.strip()))
    text = _PATH.sub("<path>", text)
    return text[:_MAX_DETAIL_CHARS] + ("..." if len(text) > _MAX_DETAIL_CHARS else "")


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




def remove_scratch(sink: Sink, pipeline_id: str, epoch: int, *, remote: bool = True) -> None:
    """Delete the epoch's scratch directory (``layout.scratch_directory``), and the
    directories above it up to ``_tmp/`` when they are left empty.

    ``WriteToFiles`` moves its temporary files into place when a run
    succeeds; a failed or killed attempt leaves them, named at random, so
    every attempt would add its own. Failing here only leaves garbage, which
    the epoch's next attempt or commit removes: it is logged, never raised.
    ``remote``: also list and delete on gs:// and s3:// (a request or two).
    """
    if is_local(sink.uri):
        directory = scratch_directory(sink.uri, pipeline_id, epoch)
        shutil.rmtree(directory, ignore_errors=True)
        for parent in (os.path.dirname(directory), os.path.join(sink.uri, "_tmp")):
            try:
                os.rmdir(parent)  # only once empty: another epoch or pipeline may be using it
            except OSError:
                pass
        return
    if remote:
        prefix = scratch_directory(sink.uri, pipeline_id, epoch)
        _delete_remote(sink, lambda: [uri for uri, _size in _list(sink, prefix)])


def discard_attempt(sink: Sink, pipeline_id: str, epoch: int,
                    relative_paths: list[str]) -> None:
    """Remove what an uncommitted attempt of ``epoch`` left: its scratch and its final files.

    An attempt that failed after moving some files into place leaves them
    under their final names; the next attempt may write other names (a new
    SQL version partitions differently), and readers that list the sink
    would see both. The epoch is not committed, so no manifest holds them.
    """
    remove_scratch(sink, pipeline_id, epoch)
    uris = [join_uri(sink.uri, p) for p in relative_paths]
    if is_local(sink.uri):
        for uri in uris:
            try:
                os.remove(uri)
            except FileNotFoundError:
                pass
            except OSError as err:
                _log.warning("could not remove an uncommitted file of epoch %s: %s", epoch, err)
    elif uris:
        _delete_remote(sink, lambda: uris)


def _list(sink: Sink, prefix: str) -> list[tuple[str, int]]:
    from beam_pipelines.storage import list_files

    return list_files(prefix, sink.options)


def _delete_remote(sink: Sink, uris: Any) -> None:
    from beam_pipelines.storage import delete_files, redact_secrets

    try:
        delete_files(uris(), sink.options)
    except Exception as err:  # noqa: BLE001 - garbage, removed by the next attempt or commit
        _log.warning("could not clean up under %s: %s", redact_secrets(sink.uri, sink.options),
                     type(err).__name__)
