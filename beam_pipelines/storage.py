"""Object storage settings for sinks: file://, gs:// and s3:// through Beam.

A sink is a URI plus ``sink.options`` (all strings)::

    endpoint_url, region, access_key_id, secret_access_key, credentials_file, project

This module turns them into what Beam 2.77's filesystems need, probes a sink
cheaply, and classifies storage errors. Importing it is cheap: Beam, boto3 and
google-cloud-storage are imported inside the functions that need them. It does
not import Flask.

How Beam 2.77 reaches each store (read from the installed sources)
-----------------------------------------------------------------
**s3://** ``apache_beam.io.aws.clients.s3.boto3_client.Client`` builds a new
``boto3.session.Session().client("s3", ...)`` for every ``S3IO`` (that is, for
every FileSystem call) from the ``S3Options`` pipeline options
``s3_endpoint_url, s3_region_name, s3_access_key_id, s3_secret_access_key,
s3_session_token, s3_verify, s3_disable_ssl``. Options left ``None`` fall
back to boto3's own environment chain. Endpoint and keys are per pipeline
(only retries and a loader cache are process-wide, see below).
:func:`pipeline_options_for_sink` maps the sink
options (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``) onto them.

**gs://** ``GCSFileSystem`` makes a new ``GcsIO`` per call, whose
``gcsio.create_storage_client(options)`` always calls
``auth.get_service_credentials(options)``. That calls ``google.auth.default()``
under ``@retry.with_exponential_backoff(num_retries=4, initial_delay_secs=2)``
and caches the result **per process** (``auth._Credentials``). Without Google
credentials this backs off ~25 s (measured) before connecting anonymously.
``--no_auth`` does *not* help: only the Dataflow runner's API client reads it.
There is no pipeline option for the GCS endpoint either: the only way to
point Beam's client elsewhere is the environment variable
``STORAGE_EMULATOR_HOST`` read by google-cloud-storage's ``Client()``.
So for gs:// :func:`activate_sink` sets **process-wide** state:

1. ``os.environ["STORAGE_EMULATOR_HOST"] = options.endpoint_url`` (or restores
   the value the process started with when the sink has no endpoint);
2. fills Beam's credential cache itself, without back-off:
   anonymous (``None``) when the sink has an ``endpoint_url`` and no
   ``credentials_file`` (Beam then uses ``storage.Client.create_anonymous_client()``,
   which honours ``STORAGE_EMULATOR_HOST``); else the ``credentials_file`` /
   ``GOOGLE_APPLICATION_CREDENTIALS`` file; else one ``google.auth.default()``
   call (anonymous if it finds nothing);
3. :func:`configure_retries` (below).

Because that state is per process, a worker must call :func:`activate_sink`
(or :func:`beam_options_for_sink`, which does) before *each* epoch and run one
epoch at a time: Beam's ``FileSystems.set_options`` (done by ``Pipeline()``)
is process-global too. The FnApiRunner's default in-process worker sees this
state; a multi-process SDK worker would not. :func:`check_sink_reachable`
uses none of it (own client, short timeouts), so it is safe in the web process.

For code outside a pipeline (listing, stat, delete), :func:`filesystem_for`
returns a Beam ``FileSystem`` bound to the sink's options; :func:`list_files`
and :func:`delete_files` use it; :func:`sink_filesystems` scopes the static
``FileSystems.*`` calls.

Failing fast
------------
Left alone, an unreachable store stalls an epoch for minutes: gcsio retries
every call for 120 s (google-cloud-storage ``DEFAULT_RETRY``); Beam's
``S3IO`` list/copy/delete/stat calls retry 7 times from 5 s (~10 min), on top
of botocore's own retries. :func:`configure_retries` (applied once by
:func:`activate_sink`, :data:`DEFAULT_RETRY_DEADLINE` = 10 s) bounds all
three, process-wide: gcsio's ``Retry`` deadline, a cap on each sleep of Beam's
shared retry ``Clock``, and ``AWS_RETRY_MODE=standard`` /
``AWS_MAX_ATTEMPTS=2`` in the environment when unset. Against a closed port
an epoch's write then fails in ~2 s (gs, deadline 2 s) / ~0.3 s (s3), and
:func:`is_transient_storage_error` says ``True``.

Pitfalls (Beam 2.77)
--------------------
* ``file://`` URIs are rejected by Beam's ``FileSystems``: pass
  :func:`beam_path` (``/abs/path``) to ``WriteToFiles`` and friends.
* ``WriteToFiles`` swallows a ``BeamIOError`` from the final rename (temp ->
  final name) and still succeeds: check the expected final objects exist
  (:func:`list_files`) before committing an epoch.
* gcsio's batch copy/delete swallow their ``RetryError`` and then fail with
  ``AttributeError: 'NoneType' object has no attribute 'status_code'``;
  :func:`is_transient_storage_error` classifies that as transient.
* Errors raised inside a pipeline may reach the caller re-wrapped
  (``RuntimeError`` carrying the text, original as ``__context__``); the
  classifier walks the chain and falls back to well-known phrases.
* Beam makes a new boto3 session per S3 call (~0.15 s each, re-reading the
  botocore models); :func:`activate_sink` makes them share one loader
  (~0.02 s each), which halves a small s3:// epoch.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import logging
import os
import re
import socket
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from beam_pipelines.errors import StorageError

__all__ = [
    "DEFAULT_RETRY_DEADLINE",
    "SCHEMES",
    "StorageSettings",
    "activate_sink",
    "beam_options_for_sink",
    "beam_path",
    "check_sink_reachable",
    "configure_retries",
    "delete_files",
    "filesystem_for",
    "is_transient_storage_error",
    "list_files",
    "pipeline_options_for_sink",
    "protect_secrets",
    "redact_secrets",
    "reset_process_state",
    "resolve_settings",
    "sink_filesystems",
    "sink_scheme",
    "split_bucket",
    "walk_exceptions",
]

_LOGGER = logging.getLogger(__name__)

SCHEMES = ("file", "gs", "s3")
SINK_OPTION_KEYS = ("endpoint_url", "region", "access_key_id", "secret_access_key",
                    "credentials_file", "project")
GCS_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

#: Retry budget for one storage call, in seconds (see :func:`configure_retries`;
#: google-cloud-storage's own default is 120 s, Beam's S3 retries ~10 min).
#: Override with ``PIPELINE_DO_STORAGE_RETRY_DEADLINE``.
DEFAULT_RETRY_DEADLINE = float(os.environ.get("PIPELINE_DO_STORAGE_RETRY_DEADLINE", "10"))


# -- URIs -------------------------------------------------------------------

def sink_scheme(uri: str) -> str:
    """``file``, ``gs`` or ``s3``; ValueError naming the allowed schemes otherwise."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown storage scheme {scheme or uri!r} in {uri!r}: allowed "
                         + ", ".join(SCHEMES))
    return scheme


def split_bucket(uri: str) -> tuple[str, str]:
    """``gs://b/p/q`` -> ``("b", "p/q")``; for file:// the bucket is ``""``."""
    scheme = sink_scheme(uri)
    rest = uri.split("://", 1)[1]
    if scheme == "file":
        return "", rest
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{scheme}:// uri needs a bucket name: {uri!r}")
    return bucket, key


def _redact_url(url: str | None) -> str | None:
    """Drop user:password from an endpoint URL before it goes in a message."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


# Secrets that error texts from storage clients can carry: credentials in a
# URL, signed-URL query parameters, authorization headers, key material.
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@'\"]+:[^/\s@'\"]*@"), r"\1***@"),
    (re.compile(r"(?i)\b(x-amz-signature|x-amz-credential|x-amz-security-token|"
                r"x-goog-signature|x-goog-credential|awsaccesskeyid|signature|access_token|"
                r"refresh_token|sig|token)=[^&\s'\"<>]+"), r"\1=***"),
    (re.compile(r"(?i)\b(authorization|x-amz-security-token|x-goog-api-key)"
                r"(['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+"), r"\1\2***"),
    (re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(-----END[A-Z ]*PRIVATE KEY-----|$)",
                re.DOTALL), "***"),
    (re.compile(r"(?i)([\"']?(?:private_key|private_key_id|client_secret|refresh_token|"
                r"secret_access_key|aws_secret_access_key|session_token)[\"']?\s*[:=]\s*)"
                r"([\"'])(?:\\.|(?!\2).)*\2"), r"\1\2***\2"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "***"),
)
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_MIN_SECRET_CHARS = 4  # shorter values would blank out ordinary words


def redact_secrets(text: str, options: Mapping[str, Any] | None = None,
                   extra_secrets: Iterable[str] = ()) -> str:
    """``text`` without the sink's secrets, for messages, logs and webhooks.

    Removes the literal values of the secret sink options (keys, the
    credentials file path), of ``extra_secrets`` and of the AWS key variables
    in the environment, then anything that looks like a credential: user:password
    in URLs, signed-URL parameters, authorization headers, private keys.
    """
    literals = _option_secrets(options)
    literals += [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]
    literals += [s for s in extra_secrets if s]
    literals += list(_protected)
    for secret in sorted({s.strip() for s in literals}, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _option_secrets(options: Mapping[str, Any] | None) -> list[str]:
    found = [str(v) for k, v in (options or {}).items()
             if k in ("access_key_id", "secret_access_key", "credentials_file") and v]
    endpoint = (options or {}).get("endpoint_url")
    if isinstance(endpoint, str):
        try:
            password = urlsplit(endpoint).password
        except ValueError:
            password = None
        if password:
            found.append(password)
    return found


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
        _protected.update(s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS)
        if _log_redaction_installed:
            return
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                record.msg, record.args = redact_secrets(record.getMessage()), ()
                if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
                    text = "".join(traceback.format_exception(*record.exc_info))
                    record.exc_text = redact_secrets(text.rstrip("\n"))
            except Exception:  # noqa: BLE001 - a log line must never fail the caller
                pass
            return record

        logging.setLogRecordFactory(redacting_factory)
        # Errors that bypass logging: in __del__ (a writer closed by the
        # garbage collector) and in threads (upload threads of the clients).
        sys.unraisablehook = _redacting_unraisable_hook
        threading.excepthook = _redacting_thread_hook
        _log_redaction_installed = True


def _redacting_unraisable_hook(unraisable: Any) -> None:
    text = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                              unraisable.exc_traceback))
    where = unraisable.err_msg or "Exception ignored in"
    sys.stderr.write(redact_secrets(f"{where}: {unraisable.object!r}\n{text}"))


def _redacting_thread_hook(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(redact_secrets(f"Exception in thread {name}:\n{text}"))


# -- settings ---------------------------------------------------------------

@dataclass(frozen=True)
class StorageSettings:
    """A sink's storage settings after falling back to the environment."""

    uri: str
    scheme: str
    bucket: str
    key: str
    endpoint_url: str | None = None
    region: str | None = None
    project: str | None = None
    credentials_file: str | None = field(default=None, repr=False)
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def public_endpoint(self) -> str | None:
        return _redact_url(self.endpoint_url)


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def resolve_settings(uri: str, options: Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None) -> StorageSettings:
    """Sink options first, then the standard environment variables."""
    env = os.environ if env is None else env
    options = options or {}
    unknown = set(options) - set(SINK_OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown storage options {sorted(unknown)}: allowed "
                         + ", ".join(SINK_OPTION_KEYS))
    opt = {k: _clean(options.get(k)) for k in SINK_OPTION_KEYS}
    scheme = sink_scheme(uri)
    bucket, key = split_bucket(uri)
    if scheme == "s3":
        endpoint = opt["endpoint_url"] or _clean(env.get("AWS_ENDPOINT_URL_S3")) \
            or _clean(env.get("AWS_ENDPOINT_URL"))
        region = opt["region"] or _clean(env.get("AWS_REGION")) \
            or _clean(env.get("AWS_DEFAULT_REGION"))
        if opt["access_key_id"] or opt["secret_access_key"]:
            key_id, secret, token = opt["access_key_id"], opt["secret_access_key"], None
        else:
            key_id = _clean(env.get("AWS_ACCESS_KEY_ID"))
            secret = _clean(env.get("AWS_SECRET_ACCESS_KEY"))
            token = _clean(env.get("AWS_SESSION_TOKEN"))
        if bool(key_id) != bool(secret):
            raise ValueError("s3 sink needs both access_key_id and secret_access_key, or neither")
        return StorageSettings(uri, scheme, bucket, key, endpoint_url=endpoint, region=region,
                               access_key_id=key_id, secret_access_key=secret,
                               session_token=token)
    if scheme == "gs":
        if env is os.environ and _original_emulator_host is not _UNSET:
            # activate_sink rewrites it for Beam; fall back to the process's own
            env = {**os.environ, "STORAGE_EMULATOR_HOST": _original_emulator_host or ""}
        endpoint = opt["endpoint_url"] or _clean(env.get("STORAGE_EMULATOR_HOST"))
        project = opt["project"] or _clean(env.get("GOOGLE_CLOUD_PROJECT")) \
            or _clean(env.get("GCLOUD_PROJECT"))
        creds = opt["credentials_file"] or _clean(env.get("GOOGLE_APPLICATION_CREDENTIALS"))
        return StorageSettings(uri, scheme, bucket, key, endpoint_url=endpoint,
                               project=project, credentials_file=creds)
    return StorageSettings(uri, scheme, bucket, key)


def pipeline_options_for_sink(uri: str, options: Mapping[str, Any] | None = None,
                              env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Beam ``PipelineOptions`` keyword arguments for writing to ``uri``.

    Pure: no side effects. For gs:// the endpoint and credentials cannot be
    pipeline options in Beam 2.77; call :func:`activate_sink` too (or use
    :func:`beam_options_for_sink`).
    """
    s = resolve_settings(uri, options, env)
    out: dict[str, Any] = {}
    if s.scheme == "s3":
        if s.endpoint_url:
            out["s3_endpoint_url"] = s.endpoint_url
            if s.endpoint_url.lower().startswith("http://"):
                out["s3_disable_ssl"] = True
        if s.region:
            out["s3_region_name"] = s.region
        if s.access_key_id:
            out["s3_access_key_id"] = s.access_key_id
            out["s3_secret_access_key"] = s.secret_access_key
        if s.session_token:
            out["s3_session_token"] = s.session_token
    elif s.scheme == "gs" and s.project:
        out["project"] = s.project
    return out


# -- process-wide activation (gs://) ---------------------------------------

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


def _beam_retry_clock() -> Any:
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
        clock = _beam_retry_clock()
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


class _CredentialsFileUnreadable(ValueError):
    """credentials_file cannot be opened (args[0]: strerror, no path)."""


def _load_gcs_credentials(settings: StorageSettings) -> Any:
    """google-auth credentials for a gs:// sink, or None for anonymous."""
    if settings.endpoint_url and not settings.credentials_file:
        return None
    if settings.credentials_file:
        path = settings.credentials_file
        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            raise _CredentialsFileUnreadable(exc.strerror or type(exc).__name__) from None
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


def activate_sink(uri: str, options: Mapping[str, Any] | None = None, *,
                  retry_deadline: float | None = None) -> StorageSettings:
    """Apply the process-wide settings Beam needs for ``uri``; cheap, idempotent.

    gs://: ``STORAGE_EMULATOR_HOST`` and Beam's credential cache (see the
    module docstring). gs:// and s3://: :func:`configure_retries` (with
    ``retry_deadline``, else once with :data:`DEFAULT_RETRY_DEADLINE`); s3://:
    one shared botocore loader for Beam's clients. file://: nothing.
    Call it in the process that runs the pipeline, before each epoch.
    """
    global _original_emulator_host
    settings = resolve_settings(uri, options)
    if settings.scheme == "file":
        return settings
    protect_secrets([*_option_secrets(options), settings.secret_access_key or "",
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
        _seed_beam_gcs_credentials(_load_gcs_credentials(settings))
    return settings


def reset_process_state() -> None:
    """Undo what :func:`activate_sink` / :func:`configure_retries` changed (tests)."""
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


def beam_options_for_sink(uri: str, options: Mapping[str, Any] | None = None,
                          **extra: Any) -> Any:
    """``activate_sink`` + ``PipelineOptions(**pipeline_options_for_sink(...), **extra)``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    activate_sink(uri, options)
    return PipelineOptions(**{**pipeline_options_for_sink(uri, options), **extra})


def filesystem_for(uri: str, options: Mapping[str, Any] | None = None) -> Any:
    """A Beam ``FileSystem`` for ``uri`` bound to the sink's settings.

    It does not touch ``FileSystems.set_options`` (process-global), so it is
    safe next to running pipelines; for gs:// it calls :func:`activate_sink`.
    """
    scheme = sink_scheme(uri)
    popts = beam_options_for_sink(uri, options)
    if scheme == "file":
        from apache_beam.io.localfilesystem import LocalFileSystem

        return LocalFileSystem(pipeline_options=popts)
    if scheme == "gs":
        from apache_beam.io.gcp.gcsfilesystem import GCSFileSystem

        return GCSFileSystem(pipeline_options=popts)
    from apache_beam.io.aws.s3filesystem import S3FileSystem

    return S3FileSystem(pipeline_options=popts)


@contextlib.contextmanager
def sink_filesystems(uri: str, options: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Within the block, the static ``FileSystems.*`` calls use the sink's settings."""
    from apache_beam.io.filesystems import FileSystems

    previous = FileSystems._pipeline_options
    FileSystems.set_options(beam_options_for_sink(uri, options))
    try:
        yield FileSystems
    finally:
        FileSystems.set_options(previous)


def beam_path(uri: str) -> str:
    """The path Beam accepts for ``uri``: ``file:///a/b`` -> ``/a/b``, others unchanged.

    Beam 2.77's LocalFileSystem has no scheme: ``FileSystems`` (and so
    ``WriteToFiles``) reject ``file://`` URIs with "Unable to get filesystem".
    """
    sink_scheme(uri)
    return uri[len("file://"):] if uri.startswith("file://") else uri


_fs_path = beam_path


def list_files(prefix_uri: str, options: Mapping[str, Any] | None = None
               ) -> list[tuple[str, int]]:
    """``(uri, size)`` of every object under ``prefix_uri`` (recursive), sorted."""
    from apache_beam.io.filesystem import BeamIOError

    fs = filesystem_for(prefix_uri, options)
    base = _fs_path(prefix_uri).rstrip("/")
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
        if details and all(_is_not_found(e) for e in details):
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
        fs.delete([_fs_path(u) for u in uris])
    except BeamIOError as exc:
        details = exc.exception_details or {}
        real = {p: e for p, e in details.items() if not _is_not_found(e)}
        if real:
            raise


def _is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    code = _http_status(exc)
    if code == 404:
        return True
    return "not found" in str(exc).lower() or "does not exist" in str(exc).lower()


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
    timeouts and no process-wide state, so it is safe in the web process.
    An unknown scheme or option is a ``ValueError`` (a definition problem).
    """
    s = resolve_settings(uri, options)  # ValueError: unknown scheme or options
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
        creds = _load_gcs_credentials(s)
    except Exception as exc:  # noqa: BLE001 - any parse error; its text may hold the key
        why = exc.args[0] if isinstance(exc, _CredentialsFileUnreadable) else type(exc).__name__
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
        code = _http_status(exc)
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


# -- error classification --------------------------------------------------

_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_TERMINAL_STATUS = frozenset({400, 401, 403, 404, 405, 409, 411, 412, 413, 416})
_TRANSIENT_S3_CODES = frozenset({"SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                                 "InternalError", "ServiceUnavailable", "Throttling",
                                 "ThrottlingException", "RequestLimitExceeded"})
_TRANSIENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                               errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                               errno.ENETDOWN, errno.EPIPE, errno.EAGAIN, errno.ENOSPC})
# Text fallbacks: runners may hand back an error only as text.
_TRANSIENT_TEXT = ("connection refused", "connectionrefusederror", "failed to establish a new "
                   "connection", "max retries exceeded", "could not connect to the endpoint",
                   "endpointconnectionerror", "connection reset", "connection aborted",
                   "timed out", "timeout", "temporarily unavailable", "serviceunavailable",
                   "503 service unavailable", "502 bad gateway", "504 gateway",
                   "retryerror", "too many requests", "slowdown",
                   "internal server error", "remote end closed connection",
                   # Beam 2.77 gcsio._batch_with_retry swallows the RetryError
                   # and copy_batch/delete_batch then fail like this:
                   "'nonetype' object has no attribute 'status_code'")
_TERMINAL_TEXT = ("nosuchbucket", "the specified bucket does not exist", "accessdenied",
                  "access denied", "forbidden", "403 ", "invalidaccesskeyid",
                  "signaturedoesnotmatch", "unauthorized", "nocredentialserror",
                  "defaultcredentialserror", "invalid_grant")


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, whichever client raised it."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    for attr in ("code", "status_code", "status"):
        code = getattr(exc, attr, None)
        if isinstance(code, int) and 100 <= code < 600:
            return code
    if response is not None:
        code = getattr(response, "status_code", None) or getattr(response, "status", None)
        if isinstance(code, int):
            return code
    return None


def _classify_one(exc: BaseException) -> bool | None:
    """True transient, False terminal, None: says nothing by itself."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    # google.api_core: RetryError = retries ran out on a retryable error
    if name == "RetryError" and module.startswith("google.api_core"):
        return True
    if name in ("DefaultCredentialsError", "RefreshError", "NoCredentialsError",
                "PartialCredentialsError"):
        return False
    if name == "TransportError" and module.startswith("google.auth"):
        return True
    if module.startswith("botocore"):
        if name == "ClientError":
            s3_code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
            if s3_code in _TRANSIENT_S3_CODES:
                return True
        elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                      "ConnectionClosedError", "ProxyConnectionError", "HTTPClientError",
                      "ConnectionError"):
            return True
    if module.startswith(("requests", "urllib3")) and (
            "Connection" in name or "Timeout" in name or "Protocol" in name
            or name in ("MaxRetryError", "NewConnectionError")):
        return True
    if name == "S3ClientError":  # Beam: code None = no HTTP answer at all
        code = getattr(exc, "code", None)
        if code is None:
            return True
    status = _http_status(exc)
    if status is not None:
        if status in _TRANSIENT_STATUS or status >= 500:
            return True
        if status in _TERMINAL_STATUS:
            return False
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    if isinstance(exc, (PermissionError, FileNotFoundError, NotADirectoryError,
                        IsADirectoryError)):
        return False
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return None


def _classify_text(text: str) -> bool | None:
    low = text.lower()
    if any(t in low for t in _TERMINAL_TEXT):
        return False
    if any(t in low for t in _TRANSIENT_TEXT):
        return True
    return None


_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())  # Python >= 3.11


def walk_exceptions(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it wraps, breadth first."""
    seen: set[int] = set()
    stack = collections.deque([exc])
    while stack:
        e = stack.popleft()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        details = getattr(e, "exception_details", None)  # Beam's BeamIOError
        if isinstance(details, dict):
            stack.extend(v for v in details.values() if isinstance(v, BaseException))
        for attr in ("__cause__", "__context__", "last_exc", "cause"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
        if isinstance(e, _EXCEPTION_GROUP):
            stack.extend(e.exceptions)


def is_transient_storage_error(exc: BaseException) -> bool:
    """Whether retrying later can help: unreachable, timeouts, 5xx, 429 -> True.

    Missing bucket/object (404), access denied (401/403), bad or missing
    credentials, invalid requests -> False. An explicit ``transient``
    attribute (pipeline.do's own errors) wins. Walks causes, contexts and
    Beam's ``BeamIOError.exception_details`` outermost first; the first
    exception that says something decides. Errors that only survive as text
    (a runner's re-raised traceback) are classified by well-known phrases.
    Unknown errors are not transient.
    """
    chain = list(walk_exceptions(exc))
    for e in chain:
        explicit = getattr(e, "transient", None)
        if isinstance(explicit, bool):
            return explicit
        verdict = _classify_one(e)
        if verdict is not None:
            return verdict
    for e in chain:
        verdict = _classify_text(str(e))
        if verdict is not None:
            return verdict
    return False
