"""The local runner: the ``Runner`` of the direct engine, seen from the API's processes.

The job manager (``runners.local.scheduler``) runs in the ``serve`` process
and watches the catalog, so starting, pausing or stopping a pipeline here is
a status move in the catalog, made inside the service's transaction: the
manager schedules what is ``running``/``stopping`` at its next tick and
cancels the epochs of a pipeline that is gone. Events go to the pipeline's
durable buffer (``runners.local.buffer``), which the epochs read.

The measured plan cache belongs to the local runner too; it lives with the
epoch graph today (``beam_pipelines.compiler``) and becomes an object the
scheduler owns when the compiler package makes it explicit (issue #7).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from beam_pipelines.catalog.store import Epoch, EpochFile, PipelineRow, Store
from beam_pipelines.errors import ConflictError, NotFoundError, TimeoutExceeded
from beam_pipelines.runners.base import DeadLetterQuery, Rejected
from beam_pipelines.runners.local.buffer import BufferHandles, EventBuffer, buffer_path
from beam_pipelines.runners.local.monitoring import monitor_snapshot
from beam_pipelines.runners.local.replays import delete_replays
from beam_pipelines.runners.local.upgrade import upgrade_data_dir

__all__ = ["LocalRunner"]

STOP_POLL_SECONDS = 0.05


class LocalRunner:
    """The direct engine: a status in the catalog that the job manager acts on."""

    def __init__(self, store: Store, data_dir: str) -> None:
        self.store = store
        self.data_dir = data_dir
        upgrade_data_dir(store, data_dir)  # buffers of earlier releases, before any is opened
        self._buffers = BufferHandles(data_dir)

    def create(self, pipeline_id: str) -> None:
        EventBuffer(buffer_path(self.data_dir, pipeline_id), create=True).close()

    # -- lifecycle: status moves the job manager acts on at its next tick ------

    def start(self, session: Session, row: PipelineRow, target: str) -> None:
        self._move(session, row, target)

    def pause(self, session: Session, row: PipelineRow, target: str) -> None:
        self._move(session, row, target)

    def resume(self, session: Session, row: PipelineRow, target: str) -> None:
        self._move(session, row, target)

    def stop(self, session: Session, row: PipelineRow, target: str) -> None:
        if row.status != target:
            row.stop_from_epoch = row.next_epoch  # the flush's first epoch
        self._move(session, row, target)

    def _move(self, session: Session, row: PipelineRow, target: str) -> None:
        if row.status == "failed":
            # The user fixed the cause: the failed epoch is re-planned with the
            # current SQL (same range; it committed nothing) and a fresh budget.
            session.execute(update(Epoch).where(Epoch.pipeline_id == row.id,
                                                Epoch.status == "planned")
                            .values(attempts=0, sql_version=row.version))
        row.status = target

    def wait_stopped(self, pipeline_id: str, timeout_s: float) -> None:
        """Wait until the job manager reports ``stopped``.

        A timed-out stop leaves ``stopping``: ``stop`` waits again, ``resume``
        goes back to ``running``. An epoch that fails for good during the
        flush makes the pipeline ``failed``, which ends the wait with a conflict.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self.store.reading() as s:
                status = s.scalar(select(PipelineRow.status).where(PipelineRow.id == pipeline_id))
            if status is None:
                raise NotFoundError(f"pipeline {pipeline_id!r} was deleted while stopping")
            if status == "stopped":
                return
            if status != "stopping":  # failed while flushing, or resumed meanwhile
                raise ConflictError(f"the pipeline is {status}: the stop's flush did not finish"
                                    + (" (see last_error; fix the cause, then stop again)"
                                       if status == "failed" else ""), {"status": status})
            if time.monotonic() > deadline:
                raise TimeoutExceeded("the pipeline is still flushing; it will stop by itself",
                                      {"status": status})
            time.sleep(STOP_POLL_SECONDS)

    def transform(self, session: Session, row: PipelineRow, version: int) -> None:
        """Nothing to do: every epoch planned from now on reads the newest SQL version."""

    def delete(self, session: Session, row: PipelineRow) -> None:
        """Refuse appends, drop the epochs; the job manager cancels any in flight."""
        try:
            self._buffers.get(row.id).mark_deleted()
        except NotFoundError:
            pass  # the buffer is already gone: nothing can be appended to it
        for model in (EpochFile, Epoch):
            session.execute(delete(model).where(model.pipeline_id == row.id))
        delete_replays(session, row.id)

    def release(self, pipeline_id: str) -> None:
        buffer = self._buffers.forget(pipeline_id)
        if buffer is not None:
            buffer.destroy()

    def describe(self, pipeline_id: str) -> dict[str, Any]:
        with self.store.reading() as s:
            status = s.scalar(select(PipelineRow.status).where(PipelineRow.id == pipeline_id))
            if status is None:
                raise NotFoundError(f"no pipeline {pipeline_id!r}")
            planned = s.scalars(select(Epoch.epoch).where(Epoch.pipeline_id == pipeline_id,
                                                          Epoch.status == "planned")
                                .order_by(Epoch.epoch)).all()
        return {"runner": "direct", "status": status, "epochs_in_flight": list(planned)}

    # -- ingest and reads ------------------------------------------------------

    def ingest(self, pipeline_id: str, table: pa.Table, rejected: Iterable[Rejected], *,
               raw_bytes: int) -> None:
        self._buffers.get(pipeline_id).append(table, rejected, raw_bytes=raw_bytes)

    def sample(self, pipeline_id: str, limit: int, schema: pa.Schema) -> pa.Table:
        return self._buffers.get(pipeline_id).recent(limit, schema)

    def ingest_counters(self, pipeline_id: str, committed_seq: int) -> dict[str, Any]:
        buffer = self._buffers.get(pipeline_id)
        counters: dict[str, Any] = dict(buffer.totals())
        counters["backlog_events"] = buffer.backlog(committed_seq).events
        return counters

    def monitor(self, pipeline_id: str, counters: dict[str, Any],
                window_seconds: float) -> dict[str, Any]:
        return monitor_snapshot(self.store, self._buffers.get(pipeline_id), pipeline_id,
                                counters, window_seconds)

    def dead_letters(self, pipeline_id: str, query: DeadLetterQuery) -> list[dict[str, Any]]:
        return self._buffers.get(pipeline_id).dead_letters(query)

    def replay_dead_letters(self, pipeline_id: str, accepted: Sequence[int], table: pa.Table,
                            rejected: Sequence[tuple[int, str, str]]) -> tuple[list[int], list[int]]:
        return self._buffers.get(pipeline_id).replay_dead_letters(accepted, table, rejected)
