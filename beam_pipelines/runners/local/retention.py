"""Retention of committed events in the local buffers, as the job manager applies it.

A release after each commit deletes what a pipeline's ``retention`` no longer
keeps (``EventBuffer.release``). A pipeline that commits nothing more (idle,
paused, stopped) still ages: :func:`expire_retained` runs the same rule over
every pipeline with a time limit, a few times a minute, on the manager's
release thread.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from beam_pipelines.catalog.store import PipelineRow, Store
from beam_pipelines.errors import NotFoundError
from beam_pipelines.model.definition import Retention, definition_from_dict
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path

__all__ = ["EXPIRE_EVERY_SECONDS", "expire_retained", "retention_of"]

_log = logging.getLogger(__name__)

# How often idle pipelines' retention is looked at: deletion is never urgent.
EXPIRE_EVERY_SECONDS = 15.0


def retention_of(store: Store, pipeline_id: str) -> Retention | None:
    """The pipeline's retention, or None once it is gone."""
    with store.reading() as s:
        row = s.get(PipelineRow, pipeline_id)
        return None if row is None else definition_from_dict(row.definition_dict()).retention


def expire_retained(store: Store, data_dir: str, now: float | None = None) -> int:
    """Delete every local buffer's segments past its pipeline's time retention;
    return how many went."""
    now = time.time() if now is None else now
    with store.reading() as s:
        rows = [(row.id, definition_from_dict(row.definition_dict()))
                for row in s.scalars(select(PipelineRow))]
    deleted = 0
    for pipeline_id, definition in rows:
        if definition.runner.type != "direct" or definition.retention.seconds is None:
            continue
        try:
            buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
        except NotFoundError:
            continue  # deleted meanwhile
        try:
            deleted += buffer.expire(definition.retention, now=now)
        except (OSError, NotFoundError):
            _log.debug("expiring the buffer of %s failed", pipeline_id, exc_info=True)
        finally:
            buffer.close()
    return deleted
