"""Watching distributed jobs: the engine's word on each job, and the status moves it implies.

A Dataflow or Flink job changes state on its own (it fails, a drain ends),
so something must ask. ``observe_job`` asks the engine once for one pipeline,
records the answer in the catalog (``EngineJob``: state, metrics, message),
logs each state change to the pipeline's logs, and makes the job manager's
moves of ``beam_pipelines.model.lifecycle.MANAGER_MOVES``:

==================  ===============================================  ============
status              job state                                        becomes
==================  ===============================================  ============
running             FAILED, CANCELLED, DRAINED, DONE (ended by       failed
                    itself or outside pipeline.do)
stopping            FAILED, CANCELLED during the stop's drain        failed
stopping            any other end (the drain finished, or the job    stopped
                    had ended before the stop: nothing to drain)
==================  ===============================================  ============

Every other combination is recorded only (a paused Dataflow job drains to
DRAINED; a replaced one is UPDATED). Each move is announced once through
``RunnerEvents`` (``on_failed`` → webhook ``pipeline.failed``, ``on_stopped``
→ ``pipeline.stopped``) by whoever made it: the move is a compare-and-set in
one transaction, so the watcher and a ``stop`` waiting in the API never both
announce it.

``JobWatcher`` runs ``observe_job`` for every distributed pipeline whose job
may still change (not ended, or its pipeline running or stopping), on a
``PeriodicThread`` in the ``serve`` process (beside the local job manager).
Each engine call is bounded (``call_timeout``): an engine that does
not answer is logged, once per outage, and asked again at the next tick.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from sqlalchemy import select

from beam_pipelines.catalog.store import EngineJob, LogEntry, PipelineRow, Store
from beam_pipelines.model.lifecycle import MANAGER_MOVES, SCHEDULED, Status
from beam_pipelines.runners.base import Engine, JobHandle, JobState, JobView, RunnerEvents
from beam_pipelines.runners.local.periodic import PeriodicThread

__all__ = ["JobWatcher", "finish_stop", "job_handle", "observe_job"]

_log = logging.getLogger(__name__)

_ENDED = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.DRAINED, JobState.DONE})
_BROKEN = frozenset({JobState.FAILED, JobState.CANCELLED})


def job_handle(job: EngineJob) -> JobHandle:
    """The engine's handle of a recorded job, its location included (None in an old row)."""
    return JobHandle(job_id=job.job_id, job_name=job.job_name, savepoint=job.savepoint,
                     location=job.location)


def observe_job(store: Store, engine: Engine, pipeline_id: str, events: RunnerEvents) -> str | None:
    """Ask the engine about the pipeline's job, record it, make the move it implies.

    Returns the job's state (None: the pipeline has no job). A stopping
    pipeline without a job (stopped before it ever ran) is stopped at once.
    """
    with store.reading() as s:
        job = s.get(EngineJob, pipeline_id)
        handle = None if job is None else job_handle(job)
        status = s.scalar(select(PipelineRow.status).where(PipelineRow.id == pipeline_id))
    if handle is None:
        if status == Status.STOPPING:
            finish_stop(store, pipeline_id, events, "no engine job ran: nothing to drain")
        return None
    view = engine.view(handle)
    move = record_view(store, pipeline_id, engine.type, handle, view)
    if move == "fail":
        message = _ended(engine.type, handle, view)
        events.on_failed(pipeline_id, 0, message, 1)
    elif move == "flushed":
        events.on_stopped(pipeline_id)
    return view.state


def record_view(store: Store, pipeline_id: str, engine_type: str, handle: JobHandle,
                view: JobView) -> str | None:
    """Store what the engine said and apply the move; return the move made, if any."""
    now = time.time()
    with store.session() as s:
        row = s.get(PipelineRow, pipeline_id)
        job = s.get(EngineJob, pipeline_id)
        if row is None or job is None or job.job_id != handle.job_id:
            return None  # deleted, or another job launched meanwhile: this view is stale
        if job.state != view.state or job.message != view.message:
            s.add(LogEntry(pipeline_id=pipeline_id, timestamp=now,
                           level="error" if view.state == JobState.FAILED else "info",
                           message=f"{engine_type} job {handle.job_id}: {_short(job.state)} → "
                                   f"{_short(view.state)}"
                                   + (f": {view.message}" if view.message else "")))
            job.state_at = now
        move = _move(row.status, job.state, view.state)
        job.state, job.message = view.state, view.message
        job.metrics = json.dumps(dict(view.metrics))
        if move is None:
            return None
        row.status = MANAGER_MOVES[move][1]
        row.updated_at = now
        if move == "fail":
            row.errors += 1
            row.last_error = _ended(engine_type, handle, view)
        else:
            s.add(LogEntry(pipeline_id=pipeline_id, timestamp=now, level="info",
                           message=f"pipeline stopped: the job is {_short(view.state)}"))
        return move


def finish_stop(store: Store, pipeline_id: str, events: RunnerEvents, why: str) -> bool:
    """``stopping`` → ``stopped`` if it still is; announce it. True when this call moved it."""
    with store.session() as s:
        row = s.get(PipelineRow, pipeline_id)
        if row is None or row.status != Status.STOPPING:
            return False
        row.status = Status.STOPPED
        row.updated_at = time.time()
        s.add(LogEntry(pipeline_id=pipeline_id, timestamp=row.updated_at, level="info",
                       message=f"pipeline stopped: {why}"))
    events.on_stopped(pipeline_id)
    return True


def _move(status: str, recorded: str, state: str) -> str | None:
    """The move a job ``state`` implies, given the state recorded before it."""
    if status == Status.RUNNING and state in _ENDED:
        return "fail"
    if status == Status.STOPPING and state in JobState.TERMINAL:
        draining = recorded not in JobState.TERMINAL
        return "fail" if draining and state in _BROKEN else "flushed"
    return None


def _ended(engine_type: str, handle: JobHandle, view: JobView) -> str:
    text = f"the {engine_type} job {handle.job_id} ended: {_short(view.state)}"
    return text + (f": {view.message}" if view.message else "")


def _runner_type(definition: str) -> str:
    return str(json.loads(definition).get("runner", {}).get("type", "direct"))


def _short(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


class JobWatcher:
    """Observes every distributed pipeline's job every ``interval`` seconds."""

    def __init__(self, store: Store, engines: Mapping[str, Engine], events: RunnerEvents, *,
                 interval: float = 5.0, call_timeout: float = 30.0, threads: int = 4) -> None:
        """``engines`` by ``runner.type``; a job of a type not here is left alone."""
        self.store = store
        self.engines = dict(engines)
        self.events = events
        self.call_timeout = call_timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="job-watcher")
        self._thread = PeriodicThread("job-watcher", interval, self.tick, _log)
        self._unreachable: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._thread.stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> None:
        """One look at every job; returns once each answered or timed out."""
        with self.store.reading() as s:
            # A job that ended, of a pipeline that no longer runs, has nothing more to say.
            jobs: list[tuple[str, str]] = [
                (pid, engine) for pid, engine in s.execute(
                    select(EngineJob.pipeline_id, EngineJob.engine)
                    .join(PipelineRow, PipelineRow.id == EngineJob.pipeline_id)
                    .where(EngineJob.state.not_in(JobState.TERMINAL)
                           | PipelineRow.status.in_(SCHEDULED))).all()]
            # A stop of a distributed pipeline that never ran ends without an engine.
            # Only of this watcher's engines: a stopping direct pipeline is flushing
            # its buffer, and only the job manager may say when that is done.
            jobless = [pid for pid, definition in s.execute(
                select(PipelineRow.id, PipelineRow.definition).where(
                    PipelineRow.status == Status.STOPPING,
                    PipelineRow.id.not_in(select(EngineJob.pipeline_id)))).all()
                if _runner_type(definition) in self.engines]
        futures = {pid: self._pool.submit(observe_job, self.store, self.engines[engine], pid,
                                          self.events)
                   for pid, engine in jobs if engine in self.engines}
        deadline = time.monotonic() + self.call_timeout
        for pipeline_id, future in futures.items():
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                self._reachable(pipeline_id)
            except FutureTimeout:
                self._unreachable_now(pipeline_id, f"the engine did not answer within "
                                      f"{self.call_timeout:g} s")
            except Exception as err:  # noqa: BLE001 - one engine's failure is not the watcher's
                _log.warning("watching the job of %s failed: %r", pipeline_id, err)
                self._unreachable_now(pipeline_id, f"the engine could not be asked "
                                      f"({type(err).__name__})")
        for pipeline_id in jobless:
            finish_stop(self.store, pipeline_id, self.events, "no engine job ran: nothing to drain")

    def _unreachable_now(self, pipeline_id: str, why: str) -> None:
        if pipeline_id in self._unreachable:
            return
        self._unreachable.add(pipeline_id)
        self.store.log(pipeline_id, "warning", f"job state unknown: {why}; asking again")

    def _reachable(self, pipeline_id: str) -> None:
        if pipeline_id in self._unreachable:
            self._unreachable.discard(pipeline_id)
            self.store.log(pipeline_id, "info", "the engine answers again")
