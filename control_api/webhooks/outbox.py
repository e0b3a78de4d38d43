"""The outbox: announced events, written to ``webhook_events`` for the dispatcher.

Whoever announces an event (the API processes, the job manager) only
inserts a row, right after its own transaction: cheap, and never waiting on
a receiver. The dispatcher (:mod:`control_api.webhooks.dispatcher`) turns
each row into one delivery per subscribed webhook.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from sqlalchemy import select

from beam_pipelines.catalog.store import PipelineRow, Store
from beam_pipelines.runners.local.epochs import EpochResult
from beam_pipelines.service import summarize_stop
from control_api.tables import Webhook, WebhookEvent

__all__ = ["Outbox", "emit", "new_event"]

_log = logging.getLogger("pipeline_do.webhooks")


def emit(store: Store, event_type: str, data: dict[str, Any]) -> None:
    """Append an event to the outbox; a failure is logged, never raised.

    Nothing is written while no webhook subscribes to the type: such an
    event could never be delivered (deliveries go only to webhooks that
    existed when the event happened).
    """
    try:
        with store.reading() as s:
            subscribed = any(event_type in json.loads(events)
                             for events in s.scalars(select(Webhook.events)))
        if not subscribed:
            return
        with store.session() as s:
            s.add(new_event(event_type, data))
    except Exception:  # noqa: BLE001 - announcing must never fail the operation announced
        _log.exception("could not record webhook event %s", event_type)


def new_event(event_type: str, data: dict[str, Any]) -> WebhookEvent:
    return WebhookEvent(event_id="evt_" + secrets.token_hex(10), type=event_type,
                        pipeline_id=data.get("id"), data=json.dumps(data, default=str),
                        created_at=time.time())


class Outbox:
    """The callbacks of ``PipelineService`` and ``JobManager``, writing to the outbox."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def on_event(self, event_type: str, data: dict[str, Any]) -> None:
        emit(self.store, event_type, data)

    def on_committed(self, result: EpochResult) -> None:
        name = self._name(result.pipeline_id)
        # A replay's epoch says so: its id, so its files are told from the live ones.
        replay = {"replay": result.replay} if result.replay is not None else {}
        for f in result.files:
            emit(self.store, "pipeline.written", {
                "id": result.pipeline_id, "name": name, "epoch": result.epoch, **replay,
                **f.public()})

    def on_stopped(self, pipeline_id: str) -> None:
        emit(self.store, "pipeline.stopped", summarize_stop(self.store, pipeline_id))

    def on_failed(self, pipeline_id: str, epoch: int, message: str, attempts: int) -> None:
        """``pipeline.failed``: once, when the job manager makes the pipeline ``failed``."""
        emit(self.store, "pipeline.failed", {"id": pipeline_id, "name": self._name(pipeline_id),
                                             "epoch": epoch, "error": message,
                                             "attempts": attempts})

    def _name(self, pipeline_id: str) -> str | None:
        with self.store.reading() as s:
            return s.scalar(select(PipelineRow.name).where(PipelineRow.id == pipeline_id))
