"""Files in a sink: list, delete, measure, fsync, clean up, and probe the sink.

Outside a pipeline (listing, stat, delete), :func:`filesystem_for` returns
a Beam ``FileSystem`` bound to the sink's options; :func:`list_files` and
:func:`delete_files` use it. After an epoch's run, :func:`file_sizes`
checks that every file of the manifest exists, exactly once, and measures
it: Beam 2.77's ``WriteToFiles`` swallows a ``BeamIOError`` from the final
rename (temp -> final name) and still succeeds, so this check is what keeps
a missing file from being committed. :func:`sync_local_files` makes a local
sink's files durable, :func:`remove_scratch` and :func:`discard_attempt`
remove what an attempt left. :func:`check_sink_reachable` probes a sink
cheaply with its own client.

The process-wide settings Beam needs to reach a sink are applied through
:mod:`beam_pipelines.storage.process` (:func:`filesystem_for` does, via
``beam_options_for_sink``); nothing here changes the process otherwise.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

from beam_pipelines.errors import StorageError
from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local, join_uri, part_file_name, scratch_directory
from beam_pipelines.storage.errors import http_status, is_not_found, is_transient_storage_error
from beam_pipelines.storage.process import (
    CredentialsFileUnreadable,
    beam_options_for_sink,
    load_gcs_credentials,
    protected_secrets,
    sink_environment,
)
from beam_pipelines.storage.redaction import redact_secrets
from beam_pipelines.storage.settings import (
    StorageSettings,
    beam_path,
    resolve_settings,
    sink_scheme,
)

__all__ = ["check_sink_reachable", "delete_files", "discard_attempt", "file_sizes",
           "filesystem_for", "list_files", "remove_scratch", "sync_local_files"]

_log = logging.getLogger(__name__)


# -- Beam filesystems --------------------------------------------------------

def filesystem_for(uri: str, options: Mapping[str, Any] | None = None) -> Any:
    """A Beam ``FileSystem`` for ``uri`` bound to the sink's settings.

    It does not touch ``FileSystems.set_options`` (process-global), so it is
    safe next to running pipelines; it applies the sink environment
    (:func:`~beam_pipelines.storage.process.beam_options_for_sink`).
    """
    return _filesystem(uri, beam_options_for_sink(uri, options))


def _filesystem(uri: str, popts: Any) -> Any:
    scheme = sink_scheme(uri)
    if scheme == "file":
        from apache_beam.io.localfilesystem import LocalFileSystem

        return LocalFileSystem(pipeline_options=popts)
    if scheme == "gs":
        from apache_beam.io.gcp.gcsfilesystem import GCSFileSystem

        return GCSFileSystem(pipeline_options=popts)
    from apache_beam.io.aws.s3filesystem import S3FileSystem

    return S3FileSystem(pipeline_options=popts)


def list_files(prefix_uri: str, options: Mapping[str, Any] | None = None
               ) -> list[tuple[str, int]]:
    """``(uri, size)`` of every object under ``prefix_uri`` (recursive), sorted."""
    from apache_beam.io.filesystem import BeamIOError

    fs = filesystem_for(prefix_uri, options)
    base = beam_path(prefix_uri).rstrip("/")
    if sink_scheme(prefix_uri) == "file":
        if not os.path.isdir(base):
            return []
        out = []
        for root, _dirs, files in os.walk(base):
            for name in files:
                p = os.path.join(root, name)
                out.append(("file://" + p, os.path.getsize(p)))
        return sorted(out)
    try:
        result = fs.match([base + "/**"])[0]
    except BeamIOError as exc:
        details = list((exc.exception_details or {}).values())
        if details and all(is_not_found(e) for e in details):
            return []
        raise
    return sorted((m.path, m.size_in_bytes) for m in result.metadata_list)


def delete_files(uris: Iterable[str], options: Mapping[str, Any] | None = None) -> None:
    """Delete objects (all under one sink); missing ones are ignored."""
    from apache_beam.io.filesystem import BeamIOError

    uris = list(uris)
    if not uris:
        return
    fs = filesystem_for(uris[0], options)
    try:
        fs.delete([beam_path(u) for u in uris])
    except BeamIOError as exc:
        details = exc.exception_details or {}
        real = {p: e for p, e in details.items() if not is_not_found(e)}
        if real:
            raise


# -- an epoch's files -------------------------------------------------------

def _matcher(sink: Sink) -> Any:
    """``match(patterns)`` of the sink's filesystem, without Beam's global ``FileSystems`` options."""
    if is_local(sink.uri):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.match
    # flags=[]: never parse this process's command line as Beam options.
    return _filesystem(sink.uri, beam_options_for_sink(sink.uri, sink.options, flags=[])).match


def file_sizes(sink: Sink, relative_paths: list[str], epoch: int,
               pipeline_id: str) -> dict[str, Any]:
    """Map each relative path to ``{"uri", "bytes"}``; fail if one is missing."""
    # Imported here: transforms.sinks imports Beam, and this module stays cheap to import.
    from transforms.sinks import file_extension

    match = _matcher(sink)
    uris = [join_uri(sink.uri, p) for p in relative_paths]
    results = match(uris) if uris else []
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
    for result in match(extra) if extra else []:
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
    return list_files(prefix, sink.options)


def _delete_remote(sink: Sink, uris: Any) -> None:
    try:
        delete_files(uris(), sink.options)
    except Exception as err:  # noqa: BLE001 - garbage, removed by the next attempt or commit
        _log.warning("could not clean up under %s: %s",
                     redact_secrets(sink.uri, sink.options, protected_secrets()),
                     type(err).__name__)


# -- reachability probe ----------------------------------------------------

def _storage_error(message: str, transient: bool, **details: Any) -> StorageError:
    err = StorageError(message, {k: v for k, v in details.items() if v is not None})
    err.transient = transient
    return err


def check_sink_reachable(uri: str, options: Mapping[str, Any] | None = None, *,
                         timeout: float = 5.0) -> None:
    """Probe the sink cheaply (the bucket exists and answers); raise ``StorageError``.

    The error says what is wrong (bucket missing, access denied, endpoint
    unreachable, bad credentials file) and carries ``transient``; it never
    includes keys or credential contents. Uses its own client with short
    timeouts and changes no process-wide state (it may fill the credential
    cache of :mod:`~beam_pipelines.storage.process`), so it is safe in the web process.
    An unknown scheme or option is a ``ValueError`` (a definition problem).
    """
    s = resolve_settings(uri, options, sink_environment())  # ValueError: unknown scheme or options
    if s.scheme == "file":
        _check_local(s)
    elif s.scheme == "gs":
        _check_gcs(s, timeout)
    else:
        _check_s3(s, timeout)


def _check_local(s: StorageSettings) -> None:
    path = s.key
    probe = path
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe.rstrip("/"))
        if parent == probe:
            break
        probe = parent
    if not probe or not os.path.isdir(probe):
        raise _storage_error(f"sink {s.uri}: {probe or path} is not a directory", False,
                             uri=s.uri, reason="not_a_directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _storage_error(f"sink {s.uri}: directory {probe} is not writable", False,
                             uri=s.uri, reason="access_denied")


def _check_gcs(s: StorageSettings, timeout: float) -> None:
    import google.cloud.storage as gcs_storage
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials

    where = f"GCS endpoint {s.public_endpoint}" if s.endpoint_url else "GCS"
    try:
        creds = load_gcs_credentials(s)
    except Exception as exc:  # noqa: BLE001 - any parse error; its text may hold the key
        why = exc.args[0] if isinstance(exc, CredentialsFileUnreadable) else type(exc).__name__
        raise _storage_error(f"sink {s.uri}: cannot load Google credentials from "
                             f"credentials_file ({why})", False, uri=s.uri,
                             reason="bad_credentials") from None
    client_options = {"api_endpoint": s.endpoint_url} if s.endpoint_url else None
    try:
        client = gcs_storage.Client(project=s.project or "<none>",
                                credentials=creds or AnonymousCredentials(),
                                client_options=client_options)
        client.get_bucket(s.bucket, timeout=timeout, retry=None)
    except gexc.NotFound:
        raise _storage_error(f"sink {s.uri}: bucket {s.bucket!r} does not exist on {where}",
                             False, uri=s.uri, reason="bucket_not_found",
                             endpoint=s.public_endpoint) from None
    except (gexc.Forbidden, gexc.Unauthorized):
        raise _storage_error(f"sink {s.uri}: access to bucket {s.bucket!r} on {where} denied"
                             " (check credentials_file / the service account's roles)",
                             False, uri=s.uri, reason="access_denied",
                             endpoint=s.public_endpoint) from None
    except Exception as exc:  # noqa: BLE001 - classified, reported without secrets
        transient = is_transient_storage_error(exc)
        raise _storage_error(f"sink {s.uri}: cannot reach {where}: {_short(exc)}", transient,
                             uri=s.uri, reason="unreachable" if transient else "error",
                             endpoint=s.public_endpoint) from None


def _check_s3(s: StorageSettings, timeout: float) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    where = f"S3 endpoint {s.public_endpoint}" if s.endpoint_url else "S3"
    try:
        client = boto3.session.Session().client(
            "s3", endpoint_url=s.endpoint_url, region_name=s.region,
            aws_access_key_id=s.access_key_id, aws_secret_access_key=s.secret_access_key,
            aws_session_token=s.session_token,
            config=Config(connect_timeout=timeout, read_timeout=timeout,
                          retries={"max_attempts": 1, "mode": "standard"}))
        client.head_bucket(Bucket=s.bucket)
    except NoCredentialsError:
        raise _storage_error(f"sink {s.uri}: no AWS credentials (set access_key_id and "
                             "secret_access_key, or the AWS_* environment)", False,
                             uri=s.uri, reason="no_credentials") from None
    except ClientError as exc:
        code = http_status(exc)
        if code == 404:
            raise _storage_error(f"sink {s.uri}: bucket {s.bucket!r} does not exist on {where}",
                                 False, uri=s.uri, reason="bucket_not_found",
                                 endpoint=s.public_endpoint) from None
        if code in (401, 403):
            raise _storage_error(f"sink {s.uri}: access to bucket {s.bucket!r} on {where} "
                                 "denied (check the keys and the bucket policy)", False,
                                 uri=s.uri, reason="access_denied",
                                 endpoint=s.public_endpoint) from None
        transient = is_transient_storage_error(exc)
        raise _storage_error(f"sink {s.uri}: {where} answered HTTP {code}", transient,
                             uri=s.uri, reason="unreachable" if transient else "error",
                             endpoint=s.public_endpoint) from None
    except (BotoCoreError, OSError) as exc:
        transient = is_transient_storage_error(exc)
        raise _storage_error(f"sink {s.uri}: cannot reach {where}: {type(exc).__name__}",
                             transient, uri=s.uri,
                             reason="unreachable" if transient else "error",
                             endpoint=s.public_endpoint) from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
