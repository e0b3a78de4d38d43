"""What the reading operations answer from the catalog: a pipeline's public shape, the stop
summary, and a page of its logs.

Pure reads of the store, shared by ``PipelineService`` and the webhook outbox
(which announces ``pipeline.stopped`` with ``summarize_stop`` when a flush
the API no longer waits for ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from beam_pipelines.catalog.store import Epoch, EpochFile, LogEntry, PipelineRow, Store
from beam_pipelines.errors import DefinitionError, NotFoundError
from beam_pipelines.model.definition import definition_from_dict
from beam_pipelines.model.times import iso

__all__ = ["LogQuery", "logs", "parse_log_query", "public", "summarize_stop"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def public(row: PipelineRow) -> dict[str, Any]:
    """The pipeline as every reply and event shows it (sink secrets left out)."""
    definition = definition_from_dict(row.definition_dict()).public()
    return {"id": row.id, "name": row.name, "status": row.status, "version": row.version,
            "sql": definition["sql"], "schema": definition["schema"],
            "event_time_field": definition["event_time_field"],
            "unknown_fields": definition["unknown_fields"], "sink": definition["sink"],
            "runner": definition["runner"], "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at)}


def summarize_stop(store: Store, pipeline_id: str) -> dict[str, Any]:
    """The pipeline after a stop, with what its flush wrote: the stop reply and event."""
    with store.reading() as s:
        row = s.get(PipelineRow, pipeline_id)
        if row is None:
            raise NotFoundError(f"no pipeline {pipeline_id!r}")
        first_epoch = row.stop_from_epoch
        flushed = s.scalar(select(func.coalesce(func.sum(Epoch.events), 0)).where(
            Epoch.pipeline_id == pipeline_id, Epoch.epoch >= first_epoch,
            Epoch.status == "committed"))
        files = s.scalars(select(EpochFile).where(EpochFile.pipeline_id == pipeline_id,
                                                  EpochFile.epoch >= first_epoch)
                          .order_by(EpochFile.id)).all()
        result = public(row)
        result["flushed_events"] = int(flushed or 0)
        result["files"] = [f.public() for f in files]
    return result


@dataclass(frozen=True)
class LogQuery:
    """The ``logs`` operation's parameters, checked."""

    limit: int = 100
    level: str | None = None
    since: float | None = None  # Unix seconds


def parse_log_query(params: dict[str, Any]) -> LogQuery:
    """The parameters, or a ``DefinitionError`` naming the bad one and what is allowed."""
    limit = params.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise DefinitionError("limit", "limit must be an integer from 1 to 1000")
    level = params.get("level")
    if level is not None and level not in LOG_LEVELS:
        raise DefinitionError("level", "level must be one of debug, info, warning, error")
    since = params.get("since")
    since_ts = None
    if since is not None:
        try:
            since_ts = datetime.fromisoformat(str(since).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise DefinitionError("since", "since must be an ISO-8601 time") from None
    return LogQuery(limit=limit, level=level, since=since_ts)


def logs(session: Session, pipeline_id: str, query: LogQuery) -> dict[str, Any]:
    """The newest ``query.limit`` entries at ``query.level`` or above, oldest first."""
    select_logs = select(LogEntry).where(LogEntry.pipeline_id == pipeline_id)
    if query.since is not None:
        select_logs = select_logs.where(LogEntry.timestamp >= query.since)
    if query.level is not None:
        select_logs = select_logs.where(
            LogEntry.level.in_(LOG_LEVELS[LOG_LEVELS.index(query.level):]))
    entries = session.scalars(select_logs.order_by(LogEntry.id.desc()).limit(query.limit)).all()
    return {"logs": [e.public() for e in reversed(entries)]}
