"""The one exception tree of pipeline.do.

Every error the data plane raises derives from :class:`PipelineDoError`.
Subclasses say what kind of failure it is and whether retrying can help
(``transient``); the control API maps them onto HTTP codes in one place
(``control_api.errors``), so nothing here knows about HTTP.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EPOCH_ERROR_CODES",
    "ConflictError",
    "DefinitionError",
    "EpochError",
    "SinkError",
    "NotFoundError",
    "PipelineDoError",
    "StorageError",
    "TimeoutExceeded",
    "Unavailable",
]


class PipelineDoError(Exception):
    """Root of every error pipeline.do raises on purpose."""

    transient = False

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class DefinitionError(PipelineDoError):
    """A definition, parameter or SQL text is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str, **details: Any) -> None:
        super().__init__(message, {"field": field, **details})
        self.field = field


class NotFoundError(PipelineDoError):
    """The named pipeline, key or webhook does not exist."""


class ConflictError(PipelineDoError):
    """The request is legal but clashes with current state."""


class StorageError(PipelineDoError):
    """Object storage or the buffer failed; may succeed when retried."""

    transient = True


class Unavailable(PipelineDoError):
    """The service cannot take the request now (buffer full, shutting down)."""

    transient = True


class TimeoutExceeded(PipelineDoError):
    """The caller's ``options.timeout`` ran out before the work finished."""


# What an epoch attempt's failure is, in one word, and what the user can do.
EPOCH_ERROR_CODES: dict[str, str] = {
    "SQL_ERROR": "the SQL failed on the epoch's events; fix it with transform, then resume",
    "SINK_UNAVAILABLE": "the sink could not be reached (transient, retried with backoff)",
    "SINK_WRITE_FAILED": "the sink refused the write",
    "WORKER_DIED": "the worker process died while running the epoch (out of memory or killed)",
    "INTERNAL_ERROR": "the epoch failed unexpectedly; the server log has the details",
}


class EpochError(PipelineDoError):
    """One failed attempt of an epoch, as users see it: a code and a short message.

    The message reads ``epoch 7 failed (sink gs://b/p): SQL_ERROR: <reason>``;
    it never holds a server path, an exception class or a chain: those go to
    the server log only. ``transient`` says whether waiting can help (a sink
    outage) or only a fix can (bad SQL, an unwritable sink).
    """

    def __init__(self, code: str, reason: str, *, epoch: int, transient: bool = False,
                 where: str = "") -> None:
        if code not in EPOCH_ERROR_CODES:
            raise ValueError(f"unknown epoch error code {code!r}: allowed "
                             + ", ".join(EPOCH_ERROR_CODES))
        sink = f" (sink {where})" if where else ""
        super().__init__(f"epoch {epoch} failed{sink}: {code}: {reason}",
                         {"code": code, "epoch": epoch, "transient": transient})
        self.code = code
        self.reason = reason
        self.epoch = epoch
        self.where = where
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in an epoch worker and pickled back to the job manager.
        return (_rebuild, (type(self), self.code, self.reason, self.epoch, self.transient,
                           self.where))


class SinkError(EpochError, StorageError):
    """An epoch attempt that failed writing to its sink (``SINK_*`` codes)."""


def _rebuild(cls: type[EpochError], code: str, reason: str, epoch: int, transient: bool,
             where: str) -> EpochError:
    return cls(code, reason, epoch=epoch, transient=transient, where=where)
