"""Error classification: is a storage error transient, and what a failed epoch reports.

:func:`is_transient_storage_error` says whether retrying later can help;
:func:`classify_epoch_error` turns whatever a failed epoch raised into the
``EpochError`` that the logs, ``last_error`` and ``pipeline.failed`` show:
classified, short, without the sink's secrets or server paths.

Errors raised inside a pipeline may reach the caller re-wrapped
(``RuntimeError`` carrying the text, original as ``__context__``), so the
classifier walks the chain (:func:`walk_exceptions`) and falls back to
well-known phrases. Beam 2.77 gcsio's batch copy/delete swallow their
``RetryError`` and then fail with ``AttributeError: 'NoneType' object has no
attribute 'status_code'``: classified as transient.
"""

from __future__ import annotations

import builtins
import collections
import errno
import logging
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

from beam_pipelines.errors import EPOCH_ERROR_CODES, EpochError, SinkError
from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local
from beam_pipelines.storage.process import protected_secrets
from beam_pipelines.storage.redaction import redact_secrets, url_password
from transforms.sql_policy import SqlError

__all__ = ["classify_epoch_error", "http_status", "is_not_found", "is_transient_storage_error",
           "walk_exceptions"]

_log = logging.getLogger(__name__)

_MAX_DETAIL_CHARS = 300


def classify_epoch_error(epoch: int, sink: Sink, err: BaseException) -> EpochError:
    """What a failed epoch attempt reports: a code, a short message, whether it is transient.

    The one place an epoch's failure is classified (the job manager adds only
    ``WORKER_DIED`` and ``INTERNAL_ERROR`` for what never reached here):

    * ``SQL_ERROR``: DuckDB (or the sandbox) failed on the events; DuckDB's
      own first line tells the user what to fix with ``transform``.
    * ``SINK_UNAVAILABLE``: :func:`is_transient_storage_error`
      says waiting can help (unreachable, timeouts, 5xx, 429).
    * ``SINK_WRITE_FAILED``: anything else on the way to the files.

    The message goes to ``last_error``, the logs and webhooks: no secrets, no
    server path, no exception class or chain. The full error, redacted, goes
    to the server log only.
    """
    secrets = [*_table_secrets(sink), *protected_secrets()]
    _log.warning("epoch %s of sink %s failed", epoch, redact_secrets(sink.uri, sink.options, secrets),
                 exc_info=err)
    where = redact_secrets(sink.uri, sink.options, secrets) if not is_local(sink.uri) else "local"
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
    password = url_password((sink.table or {}).get("catalog_uri"))
    return [password] if password else []


# -- storage errors ----------------------------------------------------------

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


def http_status(exc: BaseException) -> int | None:
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
    status = http_status(exc)
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


def is_not_found(exc: BaseException) -> bool:
    """A missing file or object (``FileNotFoundError``, HTTP 404, "not found" in the text)."""
    if isinstance(exc, FileNotFoundError):
        return True
    code = http_status(exc)
    if code == 404:
        return True
    return "not found" in str(exc).lower() or "does not exist" in str(exc).lower()
