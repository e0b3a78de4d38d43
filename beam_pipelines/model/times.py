"""How a time is shown: the one format of every time in replies and events."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["iso"]


def iso(ts: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC with milliseconds (``2026-03-01T12:00:00.000Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")
