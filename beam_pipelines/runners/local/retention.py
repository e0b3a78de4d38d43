"""Releasing committed epochs from the local buffers, and retention, on one thread.

After each commit the job manager hands the epoch to the :class:`Releaser`,
which moves the pipeline's committed offset in its buffer and deletes the
segments that the pipeline's ``retention`` no longer keeps
(``EventBuffer.release``), in commit order, off the workers and off ingest.
A pipeline that commits nothing more (idle, paused, stopped) still ages:
every ``EXPIRE_EVERY_SECONDS`` the same rule runs over every pipeline with a
time limit (:func:`expire_retained`), which also expires its dead letters.

The releaser keeps its buffers open between epochs, so a pipeline retaining
days of events is not re-indexed from its first segment at every commit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from sqlalchemy import select

from beam_pipelines.catalog.replays import pin_of
from beam_pipelines.catalog.store import PipelineRow, Store
from beam_pipelines.errors import NotFoundError
from beam_pipelines.model.definition import Retention, definition_from_dict
from beam_pipelines.runners.local.buffer import BufferHandles
from beam_pipelines.runners.local.epochs import EpochResult

__all__ = ["EXPIRE_EVERY_SECONDS", "Releaser", "expire_retained", "retention_of"]

_log = logging.getLogger(__name__)

# How often idle pipelines' retention is looked at: deletion is never urgent.
EXPIRE_EVERY_SECONDS = 15.0


def retention_of(store: Store, pipeline_id: str) -> Retention | None:
    """The pipeline's retention, or None once it is gone."""
    with store.reading() as s:
        row = s.get(PipelineRow, pipeline_id)
        return None if row is None else definition_from_dict(row.definition_dict()).retention


def expire_retained(store: Store, buffers: BufferHandles, now: float | None = None) -> int:
    """Delete every local buffer's segments past its pipeline's time retention, and
    every pipeline's dead letters last rejected longer ago than it (a distributed
    pipeline's too: they live in the same ledger); return how many segments went.
    Closes the handles of pipelines that are gone.

    Dead letters follow ``retention.seconds`` only: they are never committed,
    so without it they stay until the pipeline is deleted, and
    ``retention.bytes`` bounds the committed events alone."""
    now = time.time() if now is None else now
    with store.reading() as s:
        rows = [(row.id, definition_from_dict(row.definition_dict()))
                for row in s.scalars(select(PipelineRow))]
    buffers.keep_only(pipeline_id for pipeline_id, _ in rows)
    deleted = 0
    for pipeline_id, definition in rows:
        if definition.retention.seconds is None:
            continue
        try:
            buffer = buffers.get(pipeline_id)
            buffer.expire_dead_letters(definition.retention, now=now)
            if definition.runner.type == "direct":
                deleted += buffer.expire(definition.retention, now=now,
                                         pinned=pin_of(store, pipeline_id))
        except NotFoundError:
            buffers.forget(pipeline_id)  # deleted meanwhile
        except OSError:
            _log.debug("expiring the buffer of %s failed", pipeline_id, exc_info=True)
    return deleted


class Releaser:
    """The job manager's release thread and its queue of committed epochs."""

    def __init__(self, store: Store, data_dir: str) -> None:
        self.store = store
        self._buffers = BufferHandles(data_dir)
        self._queue: queue.Queue[EpochResult | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="epoch-release", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, result: EpochResult) -> None:
        self._queue.put(result)

    def stop(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        swept = time.monotonic()
        try:
            while True:
                try:
                    result = self._queue.get(timeout=EXPIRE_EVERY_SECONDS)
                except queue.Empty:
                    result = _IDLE
                if result is None:
                    return
                if result is not _IDLE:
                    self._release(result)
                if time.monotonic() - swept >= EXPIRE_EVERY_SECONDS:
                    swept = time.monotonic()
                    try:
                        expire_retained(self.store, self._buffers)
                    except Exception:  # noqa: BLE001 - the next round tries again
                        _log.debug("expiring retained events failed", exc_info=True)
        finally:
            self._buffers.close()

    def _release(self, result: EpochResult) -> None:
        if result.already_committed:
            return
        try:
            retention = retention_of(self.store, result.pipeline_id)
            self._buffers.get(result.pipeline_id).release(
                result.range_start, result.range_end, result.committed_at, retention=retention,
                pinned=pin_of(self.store, result.pipeline_id))
        except NotFoundError:
            self._buffers.forget(result.pipeline_id)  # deleted since it committed
        except Exception:  # noqa: BLE001 - the next release covers these frames too
            _log.debug("releasing epoch %s of %s failed", result.epoch, result.pipeline_id,
                       exc_info=True)


_IDLE = EpochResult("", 0, 0, 0, [])  # a wake-up with no epoch to release
