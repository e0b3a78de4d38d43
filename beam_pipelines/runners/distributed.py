"""The ``Runner`` of the distributed engines (``runner.type`` dataflow and flink).

The catalog keeps the status and the pipeline's engine job (``EngineJob``:
the ``JobHandle``, then what the engine last reported); the ``Engine`` makes
the engine's own calls; the engine's ``Transport`` carries ingest to the job.

==========  ===========================================================
create      a local ledger (below); nothing remote yet
start       ``engine.check`` (names a missing setting), the transport's
            topic, ``engine.launch``; status running
pause       ``engine.pause`` (Dataflow drain, Flink savepoint); paused
resume      launch again (Dataflow: same subscription; Flink: from the
            savepoint the pause recorded)
stop        ``engine.drain``; stopping until the job is DRAINED/DONE
            (``wait_stopped``, else the job watcher), then stopped
transform   ``engine.update`` while a job runs; else the next launch
            runs the new SQL
delete      ``engine.cancel`` while a job runs; the topic goes after commit
==========  ===========================================================

Engine calls happen inside the service's transaction (``runners.base``), so
a refused launch or cancel leaves the status as it was.

Ingest publishes each accepted request's Arrow table (``encode_batch``)
with a fresh ``BATCH_ID``, retried with the *same* id on a transient
failure (the streaming read de-duplicates by it), and returns only once the
broker confirmed it; then the request's counters, dead letters and a copy
of the batch go to a local ledger: an ``EventBuffer`` (shared by every API
process, surviving restarts) of which only the newest ``SAMPLE_ROWS``
requests are kept, for SQL dry runs and ``pipeline.ingested``.

What a distributed job cannot report is null, never 0: ``backlog_events``
(unread messages live in the broker), ``epochs`` and ``last_commit_at``
(a streaming job has no epochs), ``latency_ms`` and ``throughput.out_eps``,
and ``events_out``/``bytes_out``/``files_written`` unless the engine's
``JobView.metrics`` has them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any

import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.orm import Session

from beam_pipelines.catalog.store import EngineJob, LogEntry, PipelineRow, Store
from beam_pipelines.errors import (
    ConflictError,
    NotFoundError,
    PipelineDoError,
    StorageError,
    TimeoutExceeded,
    Unavailable,
)
from beam_pipelines.model.definition import definition_from_dict
from beam_pipelines.model.lifecycle import Status
from beam_pipelines.runners.base import (
    DeadLetterQuery,
    Engine,
    JobHandle,
    JobRequest,
    JobState,
    NoEvents,
    Rejected,
    RunnerEvents,
)
from beam_pipelines.runners.job_watcher import job_handle, observe_job
from beam_pipelines.runners.local.buffer import BufferHandles, EventBuffer, buffer_path
from beam_pipelines.storage.sealing import SecretBox
from transforms.batches import (
    BATCH_ID,
    EVENT_TIME_MS,
    EVENTS,
    PIPELINE_ID,
    earliest_event_ms,
    encode_batch,
    new_batch_id,
)
from transforms.decode import arrow_schema

__all__ = ["DistributedRunner", "job_name"]

_log = logging.getLogger(__name__)

# The ledger keeps the newest requests' events for dry runs; older rows are
# dropped every ``TRIM_EVERY`` appends.
SAMPLE_ROWS = 32
TRIM_EVERY = 16
# The fields of ``monitor`` a distributed job cannot report (see the module doc).
_UNREPORTED = ("backlog_events", "epochs", "last_commit_at")
_ENGINE_METRICS = ("events_out", "bytes_out", "files_written")
_NAME_CHARS = re.compile(r"[^a-z0-9-]")


def job_name(pipeline_id: str) -> str:
    """The engine job's name: Dataflow's rule ``[a-z]([-a-z0-9]*[a-z0-9])?`` fits Flink too."""
    return "pipeline-do-" + _NAME_CHARS.sub("-", pipeline_id.lower()).strip("-")


class DistributedRunner:
    """One distributed engine's ``Runner``: lifecycle through ``engine``, ingest to its transport."""

    def __init__(self, store: Store, data_dir: str, engine: Engine, *,
                 events: RunnerEvents | None = None, secret_box: SecretBox | None = None,
                 publish_timeout_s: float = 10.0, publish_attempts: int = 3,
                 stop_poll_s: float = 1.0) -> None:
        """``events`` hears of the moves ``wait_stopped`` makes (``pipeline.stopped``,
        ``pipeline.failed``); ``publish_timeout_s`` bounds each of ``publish_attempts``."""
        self.store = store
        self.data_dir = data_dir
        self.engine = engine
        self.type = engine.type
        self.events: RunnerEvents = events or NoEvents()
        self._secrets = secret_box
        self.publish_timeout_s = publish_timeout_s
        self.publish_attempts = max(1, publish_attempts)
        self.stop_poll_s = stop_poll_s
        self._ledgers = BufferHandles(data_dir)
        self._ensured: set[str] = set()  # topics this process made sure of

    def create(self, pipeline_id: str) -> None:
        EventBuffer(buffer_path(self.data_dir, pipeline_id), create=True).close()

    # -- lifecycle -------------------------------------------------------------

    def start(self, session: Session, row: PipelineRow, target: str) -> None:
        self._launch(session, row, savepoint=None)
        row.status = target

    def resume(self, session: Session, row: PipelineRow, target: str) -> None:
        job = session.get(EngineJob, row.id)
        self._launch(session, row, savepoint=None if job is None else job.savepoint)
        row.status = target

    def pause(self, session: Session, row: PipelineRow, target: str) -> None:
        job = self._job(session, row.id)
        handle = self.engine.pause(job_handle(job))
        _record_handle(session, job, handle, JobState.DRAINING, "paused")
        row.status = target

    def stop(self, session: Session, row: PipelineRow, target: str) -> None:
        """Drain a job that runs; a stopped, failed or drained one has nothing to flush."""
        job = session.get(EngineJob, row.id)
        if job is not None and row.status == Status.RUNNING:
            self.engine.drain(job_handle(job))
            _record_handle(session, job, job_handle(job), JobState.DRAINING, "draining for a stop")
        row.status = target

    def wait_stopped(self, pipeline_id: str, timeout_s: float) -> None:
        """Ask the engine until the drain ended (stopped), the job failed, or time is up.

        A timed-out wait leaves ``stopping``; the job watcher finishes the move.
        An engine that does not answer within the time left ends the wait too:
        its view goes on in a thread of its own and is recorded when it comes.
        """
        deadline = time.monotonic() + timeout_s
        asking = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stop-wait")
        try:
            while True:
                status = self._observe_status(asking, pipeline_id, deadline)
                if status == Status.STOPPED:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutExceeded("the job is still draining; the pipeline will stop by "
                                          "itself", {"status": status})
                time.sleep(self.stop_poll_s)
        finally:
            asking.shutdown(wait=False)

    def _observe_status(self, asking: ThreadPoolExecutor, pipeline_id: str,
                        deadline: float) -> str:
        """Observe the job (bounded by ``deadline``), then the pipeline's status:
        ``stopped`` or ``stopping``, else the reason the wait cannot succeed."""
        try:
            asking.submit(observe_job, self.store, self.engine, pipeline_id, self.events
                          ).result(timeout=max(0.1, deadline - time.monotonic()))
        except FutureTimeout:
            raise TimeoutExceeded(f"the {self.type} engine did not say whether the job has "
                                  "drained; the pipeline will stop by itself",
                                  {"status": Status.STOPPING}) from None
        with self.store.reading() as s:
            status = s.scalar(select(PipelineRow.status).where(PipelineRow.id == pipeline_id))
        if status is None:
            raise NotFoundError(f"pipeline {pipeline_id!r} was deleted while stopping")
        if status not in (Status.STOPPED, Status.STOPPING):
            raise ConflictError(f"the pipeline is {status}: the job's drain did not finish"
                                + (" (see last_error)" if status == Status.FAILED else ""),
                                {"status": status})
        return str(status)

    def transform(self, session: Session, row: PipelineRow, version: int) -> None:
        """Update a running job in place; otherwise the next launch runs SQL ``version``."""
        job = session.get(EngineJob, row.id)
        if job is None or row.status != Status.RUNNING or job.state in JobState.TERMINAL:
            return
        handle = self.engine.update(job_handle(job), self._request(row, savepoint=None))
        _record_handle(session, job, handle, JobState.PENDING,
                       f"updated to run sql version {version}")

    def delete(self, session: Session, row: PipelineRow) -> None:
        """Cancel a job that may still run (refused: the delete is rolled back), then
        refuse ingest; the topic goes in ``release``, after the commit."""
        job = session.get(EngineJob, row.id)
        if job is not None:
            if job.state not in JobState.TERMINAL:
                self.engine.cancel(job_handle(job))
            session.delete(job)
        try:
            self._ledgers.get(row.id).mark_deleted()
        except NotFoundError:
            pass

    def release(self, pipeline_id: str) -> None:
        self._ensured.discard(pipeline_id)
        try:
            self.engine.transport.remove(pipeline_id)
        except PipelineDoError as err:  # the pipeline is gone already; say what is left over
            _log.warning("the transport of deleted pipeline %s was not removed: %s",
                         pipeline_id, err)
        ledger = self._ledgers.forget(pipeline_id)
        if ledger is None:
            try:
                ledger = EventBuffer(buffer_path(self.data_dir, pipeline_id))
            except NotFoundError:
                return
        ledger.destroy()

    def describe(self, pipeline_id: str) -> dict[str, Any]:
        with self.store.reading() as s:
            status = s.scalar(select(PipelineRow.status).where(PipelineRow.id == pipeline_id))
            if status is None:
                raise NotFoundError(f"no pipeline {pipeline_id!r}")
            job = s.get(EngineJob, pipeline_id)
            return {"runner": self.type, "status": status, "job": _job_public(job)}

    def _job(self, session: Session, pipeline_id: str) -> EngineJob:
        job = session.get(EngineJob, pipeline_id)
        if job is None:
            raise ConflictError(f"the pipeline has no {self.type} job", {"job_id": None})
        return job

    def _launch(self, session: Session, row: PipelineRow, *, savepoint: str | None) -> None:
        definition = row.definition_dict()
        self.engine.check(definition["runner"].get("options") or {})
        job = session.get(EngineJob, row.id)
        if job is not None and job.state not in JobState.TERMINAL:
            # The recorded state may be old: a drain that ended since is fine.
            view = self.engine.view(job_handle(job))
            job.state = view.state
            if view.state not in JobState.TERMINAL:
                raise ConflictError(f"the pipeline's previous {self.type} job {job.job_id} is "
                                    f"still {view.state.removeprefix('JOB_STATE_')}: try again "
                                    "once it has ended", {"job_id": job.job_id,
                                                          "state": view.state})
        self._ensure(row.id)
        handle = self.engine.launch(self._request(row, savepoint=savepoint))
        if job is None:
            job = EngineJob(pipeline_id=row.id, engine=self.type)
            session.add(job)
        job.metrics = "{}"
        _record_handle(session, job, handle, JobState.PENDING,
                       f"launched with sql version {row.version}")

    def _request(self, row: PipelineRow, *, savepoint: str | None) -> JobRequest:
        definition = definition_from_dict(row.definition_dict())
        box = self._secrets or SecretBox.for_data_dir(self.data_dir)
        opened = replace(definition, sink=box.open_sink(definition.sink))  # for the engine only
        return JobRequest(pipeline_id=row.id, job_name=job_name(row.id),
                          definition=opened.to_dict(), sql=definition.sql, version=row.version,
                          input_schema=arrow_schema(definition.schema, definition.unknown_fields),
                          savepoint=savepoint)

    def _ensure(self, pipeline_id: str) -> None:
        if pipeline_id not in self._ensured:
            self.engine.transport.ensure(pipeline_id)
            self._ensured.add(pipeline_id)

    # -- ingest and reads --------------------------------------------------------

    def ingest(self, pipeline_id: str, table: pa.Table, rejected: Iterable[Rejected], *,
               raw_bytes: int) -> None:
        """Publish the accepted events (confirmed), then count them and keep the rejected.

        Whatever refuses the request does so before the publish (the ledger's
        disk floor, a deleted pipeline): a 503 after it would have the client
        send again what the transport already holds, a duplicate in the lake.
        Once the broker confirmed, the events are accepted: a ledger that fails
        then is logged (this request's counts and dead letters are missing from
        it), not answered as a failure.
        """
        ledger = self._ledgers.get(pipeline_id)  # NotFoundError once the pipeline is deleted
        rejected = list(rejected)
        if not table.num_rows:
            seq = ledger.append(table, rejected, raw_bytes=raw_bytes)
        else:
            payload = ledger.check_room(table)
            self._publish_table(pipeline_id, table)
            try:
                seq = ledger.append(table, rejected, raw_bytes=raw_bytes, payload=payload)
            except (StorageError, Unavailable) as err:
                _log.error("pipeline %s: %d events published to its transport but not counted "
                           "in its ledger (%d rejected records not kept): %s", pipeline_id,
                           table.num_rows, len(rejected), err)
                return
        if seq is not None and seq % TRIM_EVERY == 0 and seq > SAMPLE_ROWS:
            ledger.release(0, seq - SAMPLE_ROWS, time.time())

    def _publish_table(self, pipeline_id: str, table: pa.Table) -> None:
        attributes = {PIPELINE_ID: pipeline_id, EVENTS: str(table.num_rows)}
        earliest = earliest_event_ms(table)
        if earliest is not None:
            attributes[EVENT_TIME_MS] = str(max(earliest, 0))
        self._publish(pipeline_id, encode_batch(table), attributes)

    def _publish(self, pipeline_id: str, data: bytes, attributes: Mapping[str, str]) -> None:
        self._ensure(pipeline_id)
        attributes = {**attributes, BATCH_ID: new_batch_id()}  # one id for every attempt
        for attempt in range(1, self.publish_attempts + 1):
            try:
                self.engine.transport.publish(pipeline_id, data, attributes,
                                              self.publish_timeout_s)
                return
            except Unavailable as err:
                _log.warning("publish of %s for %s failed (attempt %d/%d): %s",
                             attributes[BATCH_ID], pipeline_id, attempt,
                             self.publish_attempts, err)
                if attempt == self.publish_attempts:
                    raise Unavailable("the events could not be handed to the pipeline's "
                                      f"{self.type} transport; nothing was accepted, send them "
                                      "again", {"transport": err.details.get("transport")}
                                      ) from None
                time.sleep(min(1.0, 0.1 * 2 ** attempt))

    def sample(self, pipeline_id: str, limit: int, schema: pa.Schema) -> pa.Table:
        return self._ledgers.get(pipeline_id).recent(limit, schema)

    def dead_letters(self, pipeline_id: str, query: DeadLetterQuery) -> list[dict[str, Any]]:
        return self._ledgers.get(pipeline_id).dead_letters(query)

    def replay_dead_letters(self, pipeline_id: str, accepted: Sequence[int], table: pa.Table,
                            rejected: Sequence[tuple[int, str, str]]) -> tuple[list[int], list[int]]:
        """Publish the accepted dead letters' events (confirmed) inside the ledger's
        claim, so a failed publish leaves them dead letters and a racing replay
        finds them taken; then count them like an ingest."""
        return self._ledgers.get(pipeline_id).replay_dead_letters(
            accepted, table, rejected, publish=lambda events: self._publish_table(pipeline_id,
                                                                                  events))

    def ingest_counters(self, pipeline_id: str, committed_seq: int) -> dict[str, Any]:
        """The ledger's totals and the engine's last metrics; null where none is known."""
        counters: dict[str, Any] = dict(self._ledgers.get(pipeline_id).totals())
        counters.update(dict.fromkeys(_UNREPORTED))
        with self.store.reading() as s:
            job = s.get(EngineJob, pipeline_id)
            metrics = {} if job is None else job.metrics_dict()
        for name in _ENGINE_METRICS:
            value = metrics.get(name)
            counters[name] = None if value is None else int(value)
        return counters

    def monitor(self, pipeline_id: str, counters: dict[str, Any],
                window_seconds: float) -> dict[str, Any]:
        ledger = self._ledgers.get(pipeline_id)
        events_in = ledger.events_since(time.time() - window_seconds)
        snapshot = {k: counters.get(k) for k in (
            "status", "events_in", "events_rejected", "events_out", "bytes_in", "bytes_out",
            "files_written", "epochs", "backlog_events", "errors", "last_error",
            "last_commit_at")}
        snapshot["throughput"] = {"in_eps": round(events_in / window_seconds, 3), "out_eps": None}
        snapshot["latency_ms"] = {"p50": None, "p95": None, "p99": None}
        snapshot["window_seconds"] = window_seconds
        snapshot["job"] = self.describe(pipeline_id)["job"]
        return snapshot


def _record_handle(session: Session, job: EngineJob, handle: JobHandle, state: str,
                   what: str) -> None:
    """The job's new handle and expected state (the watcher records the engine's word)."""
    job.job_id, job.job_name, job.savepoint = handle.job_id, handle.job_name, handle.savepoint
    job.location = handle.location
    job.state, job.state_at, job.message = state, time.time(), None
    session.add(LogEntry(pipeline_id=job.pipeline_id, timestamp=job.state_at, level="info",
                         message=f"{job.engine} job {handle.job_id}: {what}"
                                 + (f" (savepoint {handle.savepoint})" if handle.savepoint
                                    else "")))


def _job_public(job: EngineJob | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"engine": job.engine, "job_id": job.job_id, "job_name": job.job_name,
            "state": job.state, "state_at": job.state_at, "savepoint": job.savepoint,
            "message": job.message, "metrics": job.metrics_dict()}
