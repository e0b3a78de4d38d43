"""The one exception tree of pipeline.do.

Every error the data plane raises derives from :class:`PipelineDoError`.
Subclasses say what kind of failure it is and whether retrying can help
(``transient``); the control API maps them onto HTTP codes in one place
(``control_api.errors``), so nothing here knows about HTTP.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConflictError",
    "DefinitionError",
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
