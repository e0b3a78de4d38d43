"""The local job manager: a small pool of worker processes runs every epoch.

One scheduler thread looks at the store a few times a second. For each
running (or stopping) pipeline with no epoch in flight it first re-runs a
planned but uncommitted epoch (recovery), else plans the next one when it
is due, and hands it to the pool. A running pipeline's epochs therefore run
one at a time and in order, while different pipelines share the workers: a
hundred pipelines never mean a hundred Beam processes.

Nor a hundred pipelines' worth of queries ten times a second: recovery is
looked for when the manager first sees a pipeline and after a failure, and
a pipeline found with nothing due is skipped until an event reaches its
buffer, its row or flights change, or its oldest event comes of age. An
idle server with 20 running pipelines went from 33% of a core to 4%.

A stopping pipeline's flush is the exception: its remaining backlog is cut
into epochs that run on every worker at once, each committing only after
its predecessor (``run_epoch``'s ``predecessor_timeout``), so the last
seconds of a stop use all the cores instead of one. Not for Iceberg sinks,
whose snapshots are appended before the commit and must stay in order.

A failed epoch is retried with backoff (0.5 s doubling to 60 s), each time
with the pipeline's current SQL. After ``PIPELINE_DO_EPOCH_MAX_ATTEMPTS``
failed attempts (``..._MAX_TRANSIENT_ATTEMPTS`` for a sink outage) the
pipeline becomes ``failed`` and is no longer scheduled (``_record_failure``).

A committed epoch is released from the buffer (offset moved, whole segments
deleted past retention) on the manager's own release thread, not in the
worker, which goes on to its next epoch at once.

Workers (:mod:`beam_pipelines.runners.local.workers`, running
:mod:`beam_pipelines.runners.local.epoch_worker`) import Beam once and are recycled
after ``max_epochs_per_worker`` epochs so memory stays flat. One that dies
(``kill -9``, out of memory) fails only its epoch, with :class:`WorkerDied`;
a new worker takes its place and the epoch, still ``planned``, runs again.
Memory is capped (``WORKER_MEMORY_MB``): a runaway query fails its epoch
with an out-of-memory error instead of waking the kernel's OOM killer.

``delete`` cancels: a tick that finds a pipeline with epochs in flight gone
from the store kills their workers (replaced) and drops the flights, with no
failure counted. A paused (or failed) pipeline keeps its row: its running
epoch finishes and commits. :meth:`JobManager.health` says what is wrong with
a manager that no longer schedules; :mod:`beam_pipelines.runners.local.supervisor` acts on it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from beam_pipelines.catalog.store import Epoch, PipelineRow, Store
from beam_pipelines.errors import EPOCH_ERROR_CODES, EpochError, NotFoundError
from beam_pipelines.model.lifecycle import MANAGER_MOVES, SCHEDULED, Status
from beam_pipelines.runners.base import NoEvents, RunnerEvents
from beam_pipelines.runners.local.buffer import BufferHandles
from beam_pipelines.runners.local.epoch_worker import (
    WORKER_MEMORY_MB,
    init_worker,
    run_epoch_in_worker,
    run_replay_epoch_in_worker,
)
from beam_pipelines.runners.local.epochs import (
    EpochResult,
    Plan,
    pending_epoch,
    retry_delay,
    try_plan_epoch,
)
from beam_pipelines.runners.local.periodic import PeriodicThread
from beam_pipelines.runners.local.replay_scheduler import ReplayScheduler
from beam_pipelines.runners.local.retention import Releaser
from beam_pipelines.runners.local.upgrade import upgrade_data_dir
from beam_pipelines.runners.local.workers import TaskCancelled, WorkerDied, WorkerPool
from beam_pipelines.settings import data_plane_settings
from transforms.limits import SQL_MEMORY_MB

__all__ = ["SQL_MEMORY_MB", "WORKER_MEMORY_MB", "JobManager", "NoEvents", "WorkerDied"]


_log = logging.getLogger(__name__)

# Failed attempts of one epoch before its pipeline is ``failed``: a bad SQL
# or an unwritable sink fails the same way every time.
MAX_ATTEMPTS = data_plane_settings().epoch_max_attempts
# A sink outage heals by itself and the buffer holds the events meanwhile, so
# it gets more: by default 10x, with the backoff's 60 s cap about 45 minutes
# of outage before a person is asked to look (then ``resume`` after it is back).
MAX_TRANSIENT_ATTEMPTS = data_plane_settings().epoch_max_transient_attempts


# How long an epoch of a parallel flush waits for its predecessor's commit.
PREDECESSOR_TIMEOUT_SECONDS = 120.0
# A manager none of whose ticks succeeded for this long is broken (``health``).
TICK_STALE_SECONDS = 60.0


@dataclass
class _Flight:
    epoch: int
    future: Future[EpochResult]


@dataclass(frozen=True)
class _Failures:
    """A pipeline's failing epoch: its failures that waiting cannot heal, and the next try."""

    epoch: int
    attempts: int  # the epoch row's count at the last failure
    terminal: int
    retry_at: float


@dataclass(frozen=True)
class _Quiet:
    """A look at a pipeline that found nothing to plan, and what that rested on.

    It holds while the pipeline's row and flights are the same, no event has
    been committed to (or released from) its buffer, and ``until`` (when its
    oldest event comes of age) has not passed: the scheduler then skips the
    pipeline without a query. An idle pipeline costs a tick one look at its
    buffer's ``data_version``, not the planner's few store queries.
    """

    state: tuple[str, int, str, int]  # status, committed_seq, definition, epochs in flight
    data_version: int
    until: float


class JobManager:
    """Schedules epochs of every running pipeline onto a worker pool."""

    def __init__(self, database_url: str, data_dir: str, *, workers: int | None = None,
                 tick_seconds: float = 0.1, max_epochs_per_worker: int = 100,
                 events: RunnerEvents | None = None,
                 worker_memory_mb: int = WORKER_MEMORY_MB) -> None:
        """``events`` hears of every commit, failure and finished stop (``RunnerEvents``)."""
        self.store = Store(database_url)
        self.database_url = database_url
        self.data_dir = data_dir
        self.workers = workers or os.cpu_count() or 1
        self.tick_seconds = tick_seconds
        self.max_epochs_per_worker = max_epochs_per_worker
        self.worker_memory_mb = worker_memory_mb
        self._events: RunnerEvents = events or NoEvents()
        self._pool: WorkerPool | None = None
        self._closed = False
        self._ticked_at = time.monotonic()  # the end of the last tick that succeeded
        self._flights: dict[str, list[_Flight]] = {}
        self._failures: dict[str, _Failures] = {}
        self._quiet: dict[str, _Quiet] = {}
        # Pipelines with no planned epoch outside this manager's flights: a
        # pipeline is checked for one (recovery) when the manager first sees
        # it running, and again after any failure of its epochs.
        self._recovered: set[str] = set()
        self._buffers = BufferHandles(data_dir)
        self._loop = PeriodicThread("job-manager", tick_seconds, self.tick, _log)
        self._releaser = Releaser(self.store, data_dir)
        self._replays = ReplayScheduler(self.store, database_url, data_dir, self._ensure_pool,
                                        self._events, self.workers, run_replay_epoch_in_worker)

    # -- lifecycle of the manager itself --------------------------------------

    def start(self) -> None:
        # Buffers of earlier releases move to the log first; ``serve`` starts the
        # manager before gunicorn, so no request finds one in the old format.
        upgrade_data_dir(self.store, self.data_dir)
        self._ensure_pool()
        self._releaser.start()
        self._loop.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop scheduling, give running epochs ``timeout`` seconds, kill the rest
        (they stay planned: the next manager runs them again)."""
        self._closed = True  # a tick still running (hung) submits nothing more
        self._loop.stop(timeout)
        self._releaser.stop(timeout)
        if self._pool is not None:
            self._pool.shutdown(timeout)
            self._pool = None
        self._buffers.close()

    def health(self) -> str | None:
        """Why this (started) manager no longer schedules epochs, or None while it does."""
        if self._closed:
            return "the job manager is closed"
        if not self._loop.is_alive():
            return "the job manager's scheduler thread is not running"
        stale = time.monotonic() - self._ticked_at
        if stale > TICK_STALE_SECONDS:
            return f"no scheduler tick of the job manager succeeded for {stale:.0f} s"
        if self._pool is not None:
            return self._pool.problem()
        return None

    # -- scheduling ---------------------------------------------------------

    def tick(self) -> None:
        self._collect()
        with self.store.reading() as s:
            rows = s.execute(select(PipelineRow.id, PipelineRow.status, PipelineRow.definition,
                                    PipelineRow.committed_seq)
                             .where(PipelineRow.status.in_(SCHEDULED))).all()
        # Dataflow and Flink pipelines run on their engines: their buffer is only a ledger.
        rows = [row for row in rows if json.loads(row[2])["runner"]["type"] == "direct"]
        now = time.time()
        active = {row[0] for row in rows}
        if set(self._flights) - active:
            self._cancel_deleted(set(self._flights) - active)
        self._buffers.keep_only(active)
        self._recovered &= active
        for pipeline_id in set(self._quiet) - active:
            del self._quiet[pipeline_id]
        for pipeline_id, status, definition, committed_seq in rows:
            flights = self._flights.get(pipeline_id, [])
            parallel = status == Status.STOPPING and not json.loads(definition)["sink"].get("table")
            failures = self._failures.get(pipeline_id)
            backing_off = failures is not None and now < failures.retry_at
            if len(flights) >= (self.workers if parallel else 1):
                if not backing_off and pipeline_id not in self._recovered \
                        and len(flights) < self.workers:
                    self._retry_predecessor(pipeline_id, [f.epoch for f in flights])
                continue
            if backing_off:
                continue
            try:
                # Read before planning looks: a commit after this read changes it.
                version = self._buffers.get(pipeline_id).data_version()
                quiet = self._quiet.pop(pipeline_id, None)
                if quiet is not None and now < quiet.until and quiet.data_version == version \
                        and quiet.state == (status, committed_seq, definition, len(flights)):
                    self._quiet[pipeline_id] = quiet
                    continue
                while (plan := self._schedule(pipeline_id, status, committed_seq, now,
                                              parallel=parallel)).epoch is not None \
                        and parallel and len(self._flights[pipeline_id]) < self.workers:
                    pass
            except NotFoundError:
                continue  # deleted while we looked
            if plan.epoch is None:
                in_flight = len(self._flights.get(pipeline_id, []))
                self._quiet[pipeline_id] = _Quiet((status, committed_seq, definition, in_flight),
                                                  version, plan.quiet_until)
        self._replays.tick()  # after the live epochs: they go first in the pool's queue
        self._ticked_at = time.monotonic()

    def _cancel_deleted(self, candidates: set[str]) -> None:
        """Kill the epochs in flight of pipelines deleted from the store.

        Only deleted ones: a pipeline that was paused (or failed) still has its
        row, and its running epoch finishes and commits.
        """
        with self.store.reading() as s:
            kept = set(s.scalars(select(PipelineRow.id).where(PipelineRow.id.in_(candidates))))
        for pipeline_id in candidates - kept:
            flights = self._flights.pop(pipeline_id)
            for flight in flights:
                if self._pool is not None:
                    self._pool.cancel(flight.future)
            self._failures.pop(pipeline_id, None)
            self._recovered.discard(pipeline_id)
            self._quiet.pop(pipeline_id, None)
            _log.info("pipeline %s was deleted: cancelled its epochs %s", pipeline_id,
                      [f.epoch for f in flights])

    def _retry_predecessor(self, pipeline_id: str, in_flight: list[int]) -> None:
        """Run a failed epoch beside a later one still in flight, which waits for its
        commit (a stop's parallel flush, then a resume): not after the later one
        gave up waiting (``PREDECESSOR_TIMEOUT_SECONDS``)."""
        epoch = pending_epoch(self.store, pipeline_id, exclude=in_flight)
        if epoch is not None and epoch < min(in_flight):
            self._submit(pipeline_id, epoch, after_another=True)

    def _schedule(self, pipeline_id: str, status: str, committed_seq: int, now: float, *,
                  parallel: bool = False) -> Plan:
        """Submit the pipeline's next epoch if there is one, and say which.

        ``parallel``: a flush on every worker; the rest of the backlog is cut
        into as many epochs as there are workers without one of its epochs.
        """
        in_flight = [f.epoch for f in self._flights.get(pipeline_id, [])]
        if pipeline_id not in self._recovered:
            # After a crash the log's head may lag its last synced frames (it is
            # not synced itself): recovery brings them into view before planning.
            dropped = self._buffers.get(pipeline_id).recover()
            if dropped:
                self.store.log(pipeline_id, "warning", "the buffer ended in a torn write that "
                               f"was never acknowledged: {dropped} bytes cut, nothing before "
                               "them lost")
            epoch = pending_epoch(self.store, pipeline_id, exclude=in_flight)
            if epoch is not None:
                self._submit(pipeline_id, epoch, after_another=bool(in_flight))
                return Plan(epoch)
            self._recovered.add(pipeline_id)
        buffer = self._buffers.get(pipeline_id)
        ways = self.workers - len(in_flight) if parallel else 1
        plan = try_plan_epoch(self.store, pipeline_id, buffer, flush=status == Status.STOPPING,
                              now=now, ways=ways)
        if plan.epoch is not None:
            self._submit(pipeline_id, plan.epoch, after_another=bool(in_flight))
        elif status == Status.STOPPING and not in_flight \
                and buffer.backlog(committed_seq).events == 0:
            self._mark_stopped(pipeline_id)
        return plan

    def _ensure_pool(self) -> WorkerPool:
        if self._closed:
            raise RuntimeError("the job manager is closed")
        if self._pool is None:
            self._pool = WorkerPool(self.workers, initializer=init_worker,
                                    initargs=(self.worker_memory_mb,),
                                    max_tasks_per_worker=self.max_epochs_per_worker,
                                    name="pdo-epoch")
        return self._pool

    def _submit(self, pipeline_id: str, epoch: int, *, after_another: bool) -> None:
        try:
            future = self._ensure_pool().submit(
                run_epoch_in_worker, self.database_url, self.data_dir, pipeline_id, epoch,
                PREDECESSOR_TIMEOUT_SECONDS if after_another else 0.0)
        except BaseException:
            self._recovered.discard(pipeline_id)  # planned, not in flight: recovery runs it
            raise
        self._flights.setdefault(pipeline_id, []).append(_Flight(epoch, future))

    def _collect(self) -> None:
        # Oldest first: a pipeline's commits are reported, and released, in order.
        done = sorted(((p, f) for p, flights in self._flights.items() for f in flights
                       if f.future.done()), key=lambda pf: (pf[0], pf[1].epoch))
        for pipeline_id, flight in done:
            self._flights[pipeline_id].remove(flight)
            if not self._flights[pipeline_id]:
                del self._flights[pipeline_id]
            try:
                result = flight.future.result()
            except TaskCancelled:
                continue  # the pool shut down; the epoch is still planned
            except Exception as err:  # noqa: BLE001 - any epoch failure is retried
                if not self._exists(pipeline_id):
                    continue  # deleted while it ran: nothing to retry, nobody to tell
                self._record_failure(pipeline_id, flight.epoch, err)
                continue
            self._failures.pop(pipeline_id, None)
            if not result.already_committed:
                self.store.log(pipeline_id, "info",
                               f"epoch {result.epoch} committed: {result.events} events in, "
                               f"{result.rows_out} rows out, {len(result.files)} files",
                               epoch=result.epoch)
                self._releaser.put(result)
                self._events.on_committed(result)

    def _exists(self, pipeline_id: str) -> bool:
        with self.store.reading() as s:
            return s.get(PipelineRow, pipeline_id) is not None

    def _record_failure(self, pipeline_id: str, epoch: int, err: BaseException) -> None:
        """Count a failed attempt; retry with backoff, or fail the pipeline for good.

        An epoch that failed ``MAX_ATTEMPTS`` times in a way waiting cannot heal
        (bad SQL, an unwritable sink, a dead worker) makes the pipeline
        ``failed``, once, and announces it; the manager then leaves it alone
        until the user resumes it. A sink outage (``transient``) heals by
        itself while the buffer holds the events, so those failures count
        against ``MAX_TRANSIENT_ATTEMPTS``, the epoch row's count of all its
        attempts (``run_epoch`` keeps it), which a restart does not reset.
        One non-transient failure after an outage's many attempts therefore
        does not fail the pipeline at once (a bucket being re-created).
        """
        self._recovered.discard(pipeline_id)  # the epoch is still planned: run it again
        self._quiet.pop(pipeline_id, None)
        error = _epoch_error(epoch, err)
        previous = self._failures.get(pipeline_id)
        failed = False
        with self.store.session() as s:
            row = s.get(PipelineRow, pipeline_id)
            if row is None:
                return
            attempts = max(1, s.scalar(select(Epoch.attempts).where(
                Epoch.pipeline_id == pipeline_id, Epoch.epoch == epoch)) or 0)
            # The count starts again for another epoch, and when the epoch's own
            # count did (a retry with a transform's new SQL: a fresh budget).
            terminal = 0 if error.transient else 1
            if previous is not None and previous.epoch == epoch \
                    and attempts > previous.attempts:
                terminal += previous.terminal
            if error.transient:
                used, budget = attempts, MAX_TRANSIENT_ATTEMPTS
            else:
                used, budget = terminal, MAX_ATTEMPTS
            message = f"{error.message} (attempt {used} of {budget})"
            row.errors += 1
            row.last_error = message
            allowed, failed_status = MANAGER_MOVES["fail"]
            # ``terminal`` starts again after a restart; the epoch row's count does not.
            exhausted = used >= budget or attempts >= MAX_TRANSIENT_ATTEMPTS
            if exhausted and row.status in allowed:
                row.status = failed_status
                row.updated_at = time.time()
                failed = True
        if failed:
            self._failures.pop(pipeline_id, None)
            self.store.log(pipeline_id, "error", f"{message}: the pipeline is failed and no "
                           "longer retried; fix the cause (transform), then resume", epoch=epoch)
            self._events.on_failed(pipeline_id, epoch, message, attempts)  # once: on the transition
            return
        delay = retry_delay(attempts)
        self._failures[pipeline_id] = _Failures(epoch, attempts, terminal, time.time() + delay)
        self.store.log(pipeline_id, "error", f"{message}, retry in {delay:.1f}s", epoch=epoch)

    def _mark_stopped(self, pipeline_id: str) -> None:
        allowed, stopped = MANAGER_MOVES["flushed"]
        with self.store.session() as s:
            row = s.get(PipelineRow, pipeline_id)
            if row is None or row.status not in allowed:
                return
            row.status = stopped
            row.updated_at = time.time()
        self.store.log(pipeline_id, "info", "pipeline stopped: every buffered event is written")
        # Announced here, where the flush ends: a stop whose caller timed out still stops.
        self._events.on_stopped(pipeline_id)

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers,
                "in_flight": {p: [f.epoch for f in fs] for p, fs in self._flights.items()},
                "processes": self._pool.describe() if self._pool is not None else []}


def _epoch_error(epoch: int, err: BaseException) -> EpochError:
    """What an attempt's failure tells users. ``run_epoch`` classifies what it
    catches (``storage.errors.classify_epoch_error``); this adds what it cannot."""
    if isinstance(err, EpochError):
        return err
    if isinstance(err, WorkerDied):  # only the epoch whose worker died (see workers.py)
        return EpochError("WORKER_DIED", err.message, epoch=epoch)
    _log.error("epoch %s failed", epoch, exc_info=err)  # the details: server log only
    return EpochError("INTERNAL_ERROR", EPOCH_ERROR_CODES["INTERNAL_ERROR"], epoch=epoch)
