"""ALL process-wide state of the storage package, and every function that changes it.

Nothing else in :mod:`beam_pipelines.storage` changes the process; every
function here that does is named for what it changes, so ``git grep`` finds
each caller. The state kept or changed here:

* ``os.environ["STORAGE_EMULATOR_HOST"]`` (gs:// endpoint) and
  ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` (when unset):
  :func:`apply_sink_environment`, :func:`configure_retries`;
* Beam's GCS credential cache (``apache_beam.internal.gcp.auth._Credentials``)
  and our own cache of loaded credentials: :func:`apply_sink_environment`,
  :func:`load_gcs_credentials`;
* retry patches: gcsio's ``DEFAULT_RETRY*`` globals and the sleep of Beam's
  shared retry ``Clock`` (:func:`configure_retries`); Beam's boto3 module
  in ``boto3_client`` replaced by one sharing a botocore loader
  (:func:`apply_sink_environment` for s3://);
* log redaction: the log record factory, ``sys.unraisablehook`` and
  ``threading.excepthook`` and the secrets they hide (:func:`protect_secrets`);
* Beam's static ``FileSystems`` options, within :func:`sink_filesystems`.

:func:`reset_process_state` undoes all of it (tests).

Why each piece exists (Beam 2.77's gs:// credentials and endpoint, retry
budgets, boto sessions) is told in :mod:`beam_pipelines.storage`.

Importing this module is cheap: Beam, boto3 and google-cloud-storage are
imported inside the functions that need them (optional extras).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local
from beam_pipelines.settings import data_plane_settings
from beam_pipelines.storage.redaction import MIN_SECRET_CHARS, option_secrets, redact_secrets
from beam_pipelines.storage.settings import (
    StorageSettings,
    pipeline_options_for_sink,
    resolve_settings,
)

__all__ = [
    "BOTO_RETRY_ENV",
    "DEFAULT_RETRY_DEADLINE",
    "CredentialsFileUnreadable",
    "apply_epoch_sink_environment",
    "apply_sink_environment",
    "beam_options_for_sink",
    "beam_retry_clock",
    "configure_retries",
    "load_gcs_credentials",
    "protect_secrets",
    "protected_secrets",
    "reset_process_state",
    "sink_environment",
    "sink_filesystems",
]

_LOGGER = logging.getLogger(__name__)

GCS_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

#: Retry budget for one storage call, in seconds (see :func:`configure_retries`;
#: google-cloud-storage's own default is 120 s, Beam's S3 retries ~10 min).
#: Override with ``PIPELINE_DO_STORAGE_RETRY_DEADLINE``.
DEFAULT_RETRY_DEADLINE = data_plane_settings().storage_retry_deadline

_state_lock = threading.RLock()
_UNSET = object()
_original_emulator_host: Any = _UNSET
_credential_cache: dict[Any, Any] = {}
_configured_deadline: Any = _UNSET
_env_we_set: dict[str, str] = {}
_boto_loader: Any = None

#: botocore retry settings put in the environment (unless already set) for
#: Beam's boto3 clients, which take no ``Config``: standard mode, 2 attempts.
BOTO_RETRY_ENV = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"}


def sink_environment() -> Mapping[str, str]:
    """``os.environ`` as the process's own: ``STORAGE_EMULATOR_HOST`` as it was
    before :func:`apply_sink_environment` rewrote it for Beam. Reads only."""
    if _original_emulator_host is _UNSET:
        return os.environ
    return {**os.environ, "STORAGE_EMULATOR_HOST": _original_emulator_host or ""}


# -- log redaction ----------------------------------------------------------

_protected: set[str] = set()
_protected_lock = threading.Lock()
_log_redaction_installed = False


def protect_secrets(secrets: Iterable[str]) -> None:
    """Redact these values (and credential-looking text) from every log record of the process.

    Storage clients and Beam log failed requests with their URLs and full
    tracebacks; a log record factory cleans the message and the exception
    text before any handler formats them. Installed on first use.
    """
    global _log_redaction_installed
    with _protected_lock:
        _protected.update(s for s in secrets if s and len(s) >= MIN_SECRET_CHARS)
        if _log_redaction_installed:
            return
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                record.msg, record.args = _redact_protected(record.getMessage()), ()
                if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
                    text = "".join(traceback.format_exception(*record.exc_info))
                    record.exc_text = _redact_protected(text.rstrip("\n"))
            except Exception:  # noqa: BLE001 - a log line must never fail the caller
                pass
            return record

        logging.setLogRecordFactory(redacting_factory)
        # Errors that bypass logging: in __del__ (a writer closed by the
        # garbage collector) and in threads (upload threads of the clients).
        sys.unraisablehook = _redacting_unraisable_hook
        threading.excepthook = _redacting_thread_hook
        _log_redaction_installed = True


def protected_secrets() -> list[str]:
    """The values :func:`protect_secrets` was given so far in this process."""
    with _protected_lock:
        return list(_protected)


def _redact_protected(text: str) -> str:
    return redact_secrets(text, extra_secrets=protected_secrets())


def _redacting_unraisable_hook(unraisable: Any) -> None:
    text = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                              unraisable.exc_traceback))
    where = unraisable.err_msg or "Exception ignored in"
    sys.stderr.write(_redact_protected(f"{where}: {unraisable.object!r}\n{text}"))


def _redacting_thread_hook(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(_redact_protected(f"Exception in thread {name}:\n{text}"))


# -- retries and the boto loader --------------------------------------------

def beam_retry_clock() -> Any:
    """The ``Clock()`` shared by every ``@retry.with_exponential_backoff()`` in Beam."""
    from apache_beam.utils import retry

    for default in retry.with_exponential_backoff.__defaults__ or ():
        if isinstance(default, retry.Clock):
            return default
    return None


def configure_retries(deadline_seconds: float | None = DEFAULT_RETRY_DEADLINE) -> None:
    """Bound storage retries so an unreachable store fails in seconds (process-wide).

    * gs://: gcsio's google-cloud-storage ``Retry`` deadline (default 120 s)
      becomes ``deadline_seconds`` (``gcsio_retry.DEFAULT_RETRY*`` are module
      globals read by every new ``GcsIO``).
    * s3://: Beam's ``S3IO`` list/copy/delete/stat calls use
      ``@retry.with_exponential_backoff()`` (7 retries from 5 s: ~10 min on a
      closed port); every sleep of that shared clock is capped at
      ``deadline_seconds / 8``. botocore gets ``AWS_RETRY_MODE=standard`` and
      ``AWS_MAX_ATTEMPTS=2`` in the environment unless they are set already.

    ``None`` restores Beam's and the libraries' defaults.
    """
    global _configured_deadline
    import time

    from apache_beam.io.gcp import gcsio_retry

    with _state_lock:
        originals = getattr(gcsio_retry, "_pipeline_do_originals", None)
        if originals is None:
            originals = (gcsio_retry.DEFAULT_RETRY,
                         gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER)
            setattr(gcsio_retry, "_pipeline_do_originals", originals)  # noqa: B010
        clock = beam_retry_clock()
        if deadline_seconds is None:
            gcsio_retry.DEFAULT_RETRY, gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER = originals
            if clock is not None and "sleep" in vars(clock):
                del clock.sleep
            for name, value in list(_env_we_set.items()):
                if os.environ.get(name) == value:
                    del os.environ[name]
                del _env_we_set[name]
        else:
            gcsio_retry.DEFAULT_RETRY = originals[0].with_timeout(deadline_seconds)
            gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER = \
                originals[1].with_timeout(deadline_seconds)
            cap = max(0.05, deadline_seconds / 8)
            if clock is not None:
                clock.sleep = lambda seconds: time.sleep(min(seconds, cap))
            for name, value in BOTO_RETRY_ENV.items():
                if name not in os.environ:
                    os.environ[name] = value
                    _env_we_set[name] = value
        _configured_deadline = deadline_seconds


def _share_boto_loader() -> None:
    """Make Beam's per-call boto3 sessions share one botocore data loader.

    Beam builds ``boto3.session.Session().client("s3")`` for every S3IO, i.e.
    every FileSystem call; each new session re-reads botocore's JSON models
    (~0.15 s). With one shared loader a client costs ~0.02 s.
    """
    global _boto_loader
    with _state_lock:
        if _boto_loader is not None:
            return
        try:
            import types

            import boto3
            import boto3.session
            import botocore.loaders
            import botocore.session
            from apache_beam.io.aws.clients.s3 import boto3_client
        except ImportError:  # pragma: no cover - no AWS extra
            return
        make_session: Any = boto3.session.Session
        if getattr(boto3_client, "boto3", None) is not boto3:  # Beam changed: leave it
            return
        loader = botocore.loaders.create_loader()

        def session_factory(*args: Any, **kwargs: Any) -> Any:
            if not args and not kwargs:
                core = botocore.session.Session()
                core.register_component("data_loader", loader)
                kwargs["botocore_session"] = core
            return make_session(*args, **kwargs)

        shim = types.SimpleNamespace(session=types.SimpleNamespace(Session=session_factory),
                                     __wrapped__=boto3)
        setattr(boto3_client, "boto3", shim)  # noqa: B010
        _boto_loader = loader


# -- GCS credentials -------------------------------------------------------

class CredentialsFileUnreadable(ValueError):
    """credentials_file cannot be opened (args[0]: strerror, no path)."""


def load_gcs_credentials(settings: StorageSettings) -> Any:
    """google-auth credentials for a gs:// sink, or None for anonymous (cached per process)."""
    if settings.endpoint_url and not settings.credentials_file:
        return None
    if settings.credentials_file:
        path = settings.credentials_file
        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            raise CredentialsFileUnreadable(exc.strerror or type(exc).__name__) from None
        key: tuple[Any, ...] = ("file", path, mtime)
        if key not in _credential_cache:
            import google.auth

            creds, _ = google.auth.load_credentials_from_file(path, scopes=list(GCS_SCOPES))
            _credential_cache[key] = creds
        return _credential_cache[key]
    key = ("default",)
    if key not in _credential_cache:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            creds, _ = google.auth.default(scopes=list(GCS_SCOPES))
        except DefaultCredentialsError:
            _LOGGER.info("no Google credentials found: gs:// sinks connect anonymously")
            creds = None
        _credential_cache[key] = creds
    return _credential_cache[key]


def _seed_beam_gcs_credentials(creds: Any) -> None:
    """Fill ``apache_beam.internal.gcp.auth``'s per-process credential cache."""
    from apache_beam.internal.gcp import auth

    cache = getattr(auth, "_Credentials", None)
    if cache is None or not hasattr(cache, "_credentials_init"):  # Beam changed
        _LOGGER.warning("cannot preset Beam's GCS credentials (Beam %s); it may back off "
                        "for seconds looking for default credentials", _beam_version())
        return
    adapter = auth._ApitoolsCredentialsAdapter(creds) if creds is not None else None
    with cache._credentials_lock:
        cache._credentials = adapter
        cache._credentials_init = True


def _beam_version() -> str:
    try:
        from apache_beam import version

        return version.__version__
    except Exception:  # noqa: BLE001 - only for a log line
        return "?"


# -- applying a sink -------------------------------------------------------

def apply_sink_environment(uri: str, options: Mapping[str, Any] | None = None, *,
                  retry_deadline: float | None = None) -> StorageSettings:
    """Apply the process-wide settings Beam needs for ``uri``; cheap, idempotent.

    Changes: gs://: ``os.environ["STORAGE_EMULATOR_HOST"]`` and Beam's
    credential cache (see the module docstring). gs:// and s3://: :func:`configure_retries` (with
    ``retry_deadline``, else once with :data:`DEFAULT_RETRY_DEADLINE`); s3://:
    one shared botocore loader for Beam's clients. file://: nothing.
    Also registers the sink's secrets with :func:`protect_secrets`.
    Call it in the process that runs the pipeline, before each epoch.
    """
    global _original_emulator_host
    settings = resolve_settings(uri, options, sink_environment())
    if settings.scheme == "file":
        return settings
    protect_secrets([*option_secrets(options), settings.secret_access_key or "",
                     settings.access_key_id or "", settings.session_token or ""])
    with _state_lock:
        if retry_deadline is not None:
            configure_retries(retry_deadline)
        elif _configured_deadline is _UNSET:
            configure_retries(DEFAULT_RETRY_DEADLINE)
        if settings.scheme == "s3":
            _share_boto_loader()
            return settings
        if _original_emulator_host is _UNSET:
            _original_emulator_host = os.environ.get("STORAGE_EMULATOR_HOST")
        host = settings.endpoint_url or _original_emulator_host
        if host:
            os.environ["STORAGE_EMULATOR_HOST"] = host
        else:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        _seed_beam_gcs_credentials(load_gcs_credentials(settings))
    return settings

def apply_epoch_sink_environment(sink: Sink) -> dict[str, Any]:
    """Apply the sink's environment for the epoch about to run; return its Beam options.

    For gs:// Beam takes endpoint and credentials only from process-wide
    state (``STORAGE_EMULATOR_HOST``, its credential cache): without
    :func:`apply_sink_environment` before each epoch it would back off ~25 s
    looking for Google credentials, or write with the previous sink's settings.
    Local sinks change nothing and need no options.
    """
    if is_local(sink.uri):
        return {}
    apply_sink_environment(sink.uri, sink.options)
    return pipeline_options_for_sink(sink.uri, sink.options)


def beam_options_for_sink(uri: str, options: Mapping[str, Any] | None = None,
                          **extra: Any) -> Any:
    """``apply_sink_environment`` + ``PipelineOptions(**pipeline_options_for_sink(...), **extra)``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    apply_sink_environment(uri, options)
    return PipelineOptions(**{**pipeline_options_for_sink(uri, options), **extra})


@contextlib.contextmanager
def sink_filesystems(uri: str, options: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Within the block, the static ``FileSystems.*`` calls use the sink's settings.

    Changes Beam's process-global ``FileSystems`` options (restored on exit) and
    applies the sink environment (:func:`beam_options_for_sink`).
    """
    from apache_beam.io.filesystems import FileSystems

    previous = FileSystems._pipeline_options
    FileSystems.set_options(beam_options_for_sink(uri, options))
    try:
        yield FileSystems
    finally:
        FileSystems.set_options(previous)


def reset_process_state() -> None:
    """Undo what :func:`apply_sink_environment` / :func:`configure_retries` changed (tests)."""
    global _original_emulator_host, _configured_deadline, _boto_loader
    with _state_lock:
        if _configured_deadline is not _UNSET:
            configure_retries(None)
            _configured_deadline = _UNSET
        if _original_emulator_host is not _UNSET:
            if _original_emulator_host:
                os.environ["STORAGE_EMULATOR_HOST"] = _original_emulator_host
            else:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            _original_emulator_host = _UNSET
            from apache_beam.internal.gcp import auth

            cache = getattr(auth, "_Credentials", None)
            if cache is not None and hasattr(cache, "_credentials_init"):
                with cache._credentials_lock:
                    cache._credentials, cache._credentials_init = None, False
        if _boto_loader is not None:
            from apache_beam.io.aws.clients.s3 import boto3_client

            wrapped = getattr(getattr(boto3_client, "boto3", None), "__wrapped__", None)
            if wrapped is not None:
                setattr(boto3_client, "boto3", wrapped)  # noqa: B010
            _boto_loader = None
        _credential_cache.clear()
