"""The webhook event types a webhook may subscribe to."""

from __future__ import annotations

__all__ = ["EVENT_TYPES"]

EVENT_TYPES = ("pipeline.created", "pipeline.deleted", "pipeline.started", "pipeline.paused",
               "pipeline.resumed", "pipeline.stopped", "pipeline.ingested",
               "pipeline.transformed", "pipeline.written", "pipeline.failed")
