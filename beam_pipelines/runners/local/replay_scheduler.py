"""The job manager's part in replays: their epochs on the same worker pool.

Each tick (after the live pipelines' own scheduling) the job manager asks
the :class:`ReplayScheduler` to collect finished replay epochs and submit
the next planned epoch of every running replay, one at a time per replay,
and at most half the workers' worth of replays at once, so live epochs
always find a worker soon. The pipeline's status does not matter: a replay
runs while its pipeline runs, is paused, stopped or failed.

Recovery needs no step of its own: an epoch still ``planned`` after a crash
is simply the replay's next, and ``run_replay_epoch`` discards what the
killed attempt left before running it again. A failed attempt is retried
with the live epochs' backoff; after ``MAX_ATTEMPTS`` failures
(``MAX_TRANSIENT_ATTEMPTS`` for a sink outage) the replay is ``failed``
(its range is no longer pinned). A replay whose pipeline was deleted is
gone from the catalog: its epoch in flight is cancelled (the worker killed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy import func, select

from beam_pipelines.catalog.replays import FAILED, RUNNING, Replay, ReplayEpoch
from beam_pipelines.catalog.store import Store
from beam_pipelines.errors import EpochError, NotFoundError
from beam_pipelines.runners.base import RunnerEvents
from beam_pipelines.runners.local.epochs import EpochResult, retry_delay
from beam_pipelines.runners.local.replays import planned_stamp
from beam_pipelines.runners.local.workers import TaskCancelled, WorkerDied, WorkerPool
from beam_pipelines.settings import data_plane_settings

__all__ = ["ReplayScheduler"]

_log = logging.getLogger(__name__)
MAX_ATTEMPTS = data_plane_settings().epoch_max_attempts
MAX_TRANSIENT_ATTEMPTS = data_plane_settings().epoch_max_transient_attempts

_LOOK = -1  # never a stamp: the next tick looks


@dataclass
class _Flight:
    epoch: int
    future: Future[EpochResult]


class ReplayScheduler:
    """Runs the planned epochs of running replays on the job manager's pool."""

    def __init__(self, store: Store, database_url: str, data_dir: str,
                 pool: Callable[[], WorkerPool], events: RunnerEvents, workers: int,
                 run: Callable[[str, str, str, int], EpochResult]) -> None:
        """``run``: the workers' entry for one replay epoch (``database_url, data_dir,
        replay_id, epoch``), the job manager's, beside its live one."""
        self.store = store
        self._run = run
        self.database_url = database_url
        self.data_dir = data_dir
        self._pool = pool
        self._events = events
        self.max_flights = max(1, workers // 2)
        self._flights: dict[str, _Flight] = {}
        self._retry_at: dict[str, float] = {}
        # The planned-stamp when a look last found nothing to run (_LOOK: look next tick).
        self._idle_stamp: int | None = _LOOK

    def tick(self) -> None:
        """Collect, then look for replay epochs to run: a query only while replays run
        or after one was planned (``replays.touch_planned``), so an idle tick stays at
        the job manager's one query."""
        self._collect()
        stamp = planned_stamp(self.data_dir)
        if not self._flights and not self._retry_at and stamp == self._idle_stamp:
            return
        with self.store.reading() as s:
            due = s.execute(select(ReplayEpoch.replay_id, func.min(ReplayEpoch.epoch))
                            .join(Replay, Replay.id == ReplayEpoch.replay_id)
                            .where(Replay.status == RUNNING, ReplayEpoch.status == "planned")
                            .group_by(ReplayEpoch.replay_id)
                            .order_by(func.min(Replay.created_at))).all()
        self._idle_stamp = stamp if not due else _LOOK
        active = {replay_id for replay_id, _epoch in due}
        missing = set(self._flights) - active
        if missing:
            # Done ones stay to be collected: a worker commits before its result is back.
            with self.store.reading() as s:
                kept = set(s.scalars(select(Replay.id).where(Replay.id.in_(missing))))
            for replay_id in missing - kept:
                self._cancel(replay_id)
        now = time.time()
        for replay_id, epoch in due:
            if len(self._flights) >= self.max_flights:
                break
            if replay_id in self._flights or now < self._retry_at.get(replay_id, 0.0):
                continue
            future = self._pool().submit(self._run, self.database_url, self.data_dir,
                                         replay_id, epoch)
            self._flights[replay_id] = _Flight(epoch, future)

    def _cancel(self, replay_id: str) -> None:
        """A replay in flight that is gone with its pipeline: kill its worker."""
        flight = self._flights[replay_id]
        if flight.future.done() or not self._pool().cancel(flight.future):
            return  # finished meanwhile: the next collect reports it
        del self._flights[replay_id]
        self._retry_at.pop(replay_id, None)
        _log.info("replay %s is gone: cancelled its epoch %s", replay_id, flight.epoch)

    def _collect(self) -> None:
        for replay_id, flight in list(self._flights.items()):
            if not flight.future.done():
                continue
            del self._flights[replay_id]
            try:
                result = flight.future.result()
            except (TaskCancelled, NotFoundError):
                continue  # the pool shut down (still planned), or the replay is gone
            except Exception as err:  # noqa: BLE001 - any epoch failure is retried
                self._record_failure(replay_id, flight.epoch, err)
                continue
            self._retry_at.pop(replay_id, None)
            if result.already_committed:
                continue
            self.store.log(result.pipeline_id, "info",
                           f"replay {replay_id} epoch {result.epoch} committed: {result.events} "
                           f"events in, {result.rows_out} rows out, {len(result.files)} files")
            self._events.on_committed(result)

    def _record_failure(self, replay_id: str, epoch: int, err: BaseException) -> None:
        if isinstance(err, EpochError):
            message, transient = str(err), err.transient
        elif isinstance(err, WorkerDied):
            message, transient = f"epoch {epoch} failed: WORKER_DIED: {err.message}", False
        else:
            _log.error("replay %s epoch %s failed", replay_id, epoch, exc_info=err)
            message, transient = f"epoch {epoch} failed: INTERNAL_ERROR", False
        with self.store.session() as s:
            replay = s.get(Replay, replay_id)
            if replay is None:
                return  # deleted with its pipeline
            attempts = s.scalar(select(ReplayEpoch.attempts).where(
                ReplayEpoch.replay_id == replay_id, ReplayEpoch.epoch == epoch)) or 1
            budget = MAX_TRANSIENT_ATTEMPTS if transient else MAX_ATTEMPTS
            replay.last_error = f"{message} (attempt {attempts} of {budget})"
            failed = attempts >= budget
            if failed:
                replay.status, replay.finished_at = FAILED, time.time()
            pipeline_id, text = replay.pipeline_id, replay.last_error
        if failed:
            self._retry_at.pop(replay_id, None)
            self.store.log(pipeline_id, "error", f"replay {replay_id}: {text}: the replay is "
                           "failed and its range no longer kept for it")
            return
        delay = retry_delay(attempts)
        self._retry_at[replay_id] = time.time() + delay
        self.store.log(pipeline_id, "error", f"replay {replay_id}: {text}, retry in {delay:.1f}s")
