"""The monitor block: counters, throughput over a window, ack-to-commit latency."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from beam_pipelines.catalog.store import Epoch, Store
from beam_pipelines.runners.local.buffer import EventBuffer
from beam_pipelines.runners.local.replays import replay_views

__all__ = ["monitor_snapshot"]

_COUNTERS = ("status", "events_in", "events_rejected", "events_out", "bytes_in", "bytes_out",
             "files_written", "epochs", "backlog_events", "errors", "last_error",
             "last_commit_at")


def monitor_snapshot(store: Store, buffer: EventBuffer, pipeline_id: str,
                     counters: dict[str, Any], window_seconds: float) -> dict[str, Any]:
    now = time.time()
    since = now - window_seconds
    with store.reading() as s:
        out = s.scalar(select(func.coalesce(func.sum(Epoch.rows_out), 0)).where(
            Epoch.pipeline_id == pipeline_id, Epoch.status == "committed",
            Epoch.committed_at >= since))
    events_in = buffer.events_since(since)
    snapshot = {k: counters[k] for k in _COUNTERS}
    snapshot["throughput"] = {"in_eps": round(events_in / window_seconds, 3),
                              "out_eps": round(int(out or 0) / window_seconds, 3)}
    snapshot["latency_ms"] = buffer.latency_percentiles(since)
    snapshot["window_seconds"] = window_seconds
    snapshot["replays"] = replay_views(store, pipeline_id)
    return snapshot
