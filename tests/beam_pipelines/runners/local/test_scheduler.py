"""The job manager's scheduler on the real store, buffers and worker pool."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from sqlalchemy import event, select

from beam_pipelines.catalog.store import Epoch, Store
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.epochs import plan_epoch
from beam_pipelines.runners.local.scheduler import JobManager
from beam_pipelines.service import PipelineService
from tests.live import query, wait_for

SCHEMA = [{"name": "n", "type": "int64", "required": True}]


@pytest.fixture
def manager(service: PipelineService, tmp_path: Any) -> Iterator[JobManager]:
    # Not started: the test calls tick() itself, as the scheduler thread would.
    jobs = JobManager(service.store.url, str(tmp_path), workers=1)
    yield jobs
    jobs.close()


def _running(service: PipelineService, name: str, **roll: Any) -> str:
    created = service.create({"name": name, "schema": SCHEMA, "sql": "SELECT n FROM events",
                              "sink": {"roll": {"interval_seconds": 3600, "max_events": 1000,
                                                **roll}}})
    service.transition(name, "start")
    return str(created["id"])


def _ingest(service: PipelineService, name: str, count: int) -> None:
    body = "\n".join(f'{{"n": {i}}}' for i in range(count)).encode()
    assert service.ingest_json_lines(name, body)["accepted"] == count


class _Statements:
    """The SQL statements a store executes, on its write and its read engine."""

    def __init__(self, store: Store) -> None:
        self.seen: list[str] = []
        for engine in {store.engine, store.read_engine}:
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(" ".join(statement.split())[:40])

    def during(self, call: Any) -> list[str]:
        before = len(self.seen)
        call()
        return self.seen[before:]


def _committed(store: Store, pipeline_id: str) -> list[tuple[int, str]]:
    with store.session() as s:
        return [(r.epoch, r.status) for r in s.execute(select(Epoch.epoch, Epoch.status).where(
            Epoch.pipeline_id == pipeline_id).order_by(Epoch.epoch)).all()]


def _tick_until(manager: JobManager, done: Callable[[], bool], message: str) -> None:
    """Tick, as the scheduler thread would, until ``done``."""
    def ticked() -> bool:
        manager.tick()
        return done()
    wait_for(ticked, timeout=60, interval=0.05, message=message)


def test_idle_pipelines_cost_a_tick_one_query_however_many_there_are(
        service: PipelineService, manager: JobManager) -> None:
    for k in range(12):
        _running(service, f"p{k}")
    statements = _Statements(manager.store)
    one_query = ["BEGIN", "SELECT pipelines.id, pipelines.status, p"]
    assert len(statements.during(manager.tick)) > 12  # the first look plans (nothing) for each
    # Nothing changed: one query for the running pipelines, none per pipeline.
    assert statements.during(manager.tick) == one_query
    assert statements.during(manager.tick) == one_query
    # An event in one buffer brings that one pipeline back to the planner; not
    # due (1 of 1,000 events, an hour's roll), it is quiet again after one look.
    _ingest(service, "p3", 1)
    assert len(statements.during(manager.tick)) > len(one_query)
    assert statements.during(manager.tick) == one_query


def test_a_quiet_pipeline_is_planned_when_its_oldest_event_comes_of_age(
        service: PipelineService, manager: JobManager) -> None:
    pipeline_id = _running(service, "aging", interval_seconds=1.0)
    before_ingest = time.time()
    _ingest(service, "aging", 5)
    # No new event and no other change: only the clock makes the epoch due.
    _tick_until(manager, lambda: _committed(manager.store, pipeline_id) == [(1, "committed")],
                "epoch 1 of the aging pipeline")
    assert service.get("aging")["events_out"] == 5
    # Planned once its oldest event was a second old, not at the first tick (which a
    # slow machine may reach only after that second: hence no "nothing yet" check).
    with service.store.reading() as s:
        planned_at = s.scalar(select(Epoch.planned_at).where(Epoch.pipeline_id == pipeline_id))
    assert planned_at is not None and planned_at >= before_ingest + 1.0


def test_a_planned_epoch_left_by_an_earlier_manager_runs_first(
        service: PipelineService, manager: JobManager, tmp_path: Any) -> None:
    pipeline_id = _running(service, "left")
    _ingest(service, "left", 3)
    # Planned, as by a manager that died before its worker ran it.
    buffer = EventBuffer(buffer_path(service.data_dir, pipeline_id))
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 1
    buffer.close()
    _ingest(service, "left", 4)  # not due: after recovery, nothing more is planned
    _tick_until(manager, lambda: _committed(manager.store, pipeline_id) == [(1, "committed")],
                "the left-behind epoch 1")
    for _ in range(3):
        manager.tick()
    assert _committed(manager.store, pipeline_id) == [(1, "committed")]
    assert service.get("left")["events_out"] == 3


# One hash per row of a range as long as the event's n says: ~10^12 of them, hours of
# CPU for each event (the dry run at create, on no events, is instant).
_SLOW_SQL = ("SELECT e.n, (SELECT count(*) FROM range(e.n * 0 + {rows}) r(i) "
             "WHERE hash(i) = 0) AS c FROM events e")


def _slow(service: PipelineService, name: str, rows: int, events: int) -> str:
    created = service.create({"name": name, "schema": SCHEMA, "sql": _SLOW_SQL.format(rows=rows),
                              "sink": {"roll": {"interval_seconds": 3600, "max_events": events}}})
    service.transition(name, "start")
    _ingest(service, name, events)
    return str(created["id"])


def _busy_worker(manager: JobManager) -> int | None:
    busy = [p["pid"] for p in manager.describe()["processes"] if p["busy"]]
    return busy[0] if busy else None


def _attempts(store: Store, pipeline_id: str) -> int:
    with store.reading() as s:
        return int(s.scalar(select(Epoch.attempts).where(Epoch.pipeline_id == pipeline_id,
                                                         Epoch.epoch == 1)) or 0)


# CPU seconds a worker spends past an epoch's first step before we take it to be in
# its SQL. A whole first epoch of a small pipeline (plan compiled, run, committed)
# took a fresh worker 0.3 s of CPU here, its next ones 0.14 s.
_IN_SQL_CPU_SECONDS = 2.0


def _tick_until_in_its_sql(manager: JobManager, pipeline_id: str) -> int:
    """Tick until the pipeline's epoch 1 runs its (endless) SQL; return its worker's pid.

    Handed to a worker is not enough: a delete that comes before the epoch read
    its row or its buffer ends the epoch at once, with nothing left to cancel.
    Its attempt counted (the row read) and the worker's CPU time grown well past
    what the steps before the SQL cost, it can only end by being cancelled.
    """
    counted_at: dict[int, float] = {}

    def in_sql() -> int | None:
        manager.tick()
        pid = _busy_worker(manager)
        if pid is None or _attempts(manager.store, pipeline_id) < 1:
            return None
        cpu = sum(psutil.Process(pid).cpu_times()[:2])
        return pid if cpu - counted_at.setdefault(pid, cpu) >= _IN_SQL_CPU_SECONDS else None

    return int(wait_for(in_sql, timeout=180, interval=0.05, message="the epoch in its SQL"))


def test_delete_cancels_the_running_epoch_and_its_worker_runs_other_pipelines(
        service: PipelineService, manager: JobManager, tmp_path: Any) -> None:
    slow_id = _slow(service, "slow", 10**12, 3)
    fast_id = _running(service, "fast", max_events=5)
    pid = _tick_until_in_its_sql(manager, slow_id)
    assert manager.describe()["in_flight"] == {slow_id: [1]}

    service.delete("slow")
    _ingest(service, "fast", 5)
    # One worker: the fast pipeline commits only once the slow epoch is gone from it.
    _tick_until(manager, lambda: _committed(manager.store, fast_id) == [(1, "committed")],
                "the other pipeline's epoch, on the freed worker")
    assert slow_id not in manager.describe()["in_flight"]
    assert pid not in [p["pid"] for p in manager.describe()["processes"]]
    assert not (tmp_path / "lake" / "slow").exists()
    rows = query(f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/fast/**/*.parquet')")
    assert rows == [(5,)]
    fast = service.get("fast")
    assert fast["errors"] == 0, fast["last_error"]


def test_pause_lets_the_running_epoch_finish_and_commit(
        service: PipelineService, manager: JobManager) -> None:
    pipeline_id = _slow(service, "paused", 3 * 10**8, 2)  # a second or two per event
    _tick_until(manager, lambda: _busy_worker(manager) is not None, "the epoch to run")
    service.transition("paused", "pause")
    _tick_until(manager, lambda: _committed(manager.store, pipeline_id) == [(1, "committed")],
                "the paused pipeline's running epoch to commit")
    assert service.get("paused")["events_out"] == 2 and service.get("paused")["errors"] == 0


def test_a_failed_predecessor_is_retried_beside_its_waiting_successor(
        service: PipelineService, tmp_path: Any) -> None:
    """A stop's parallel flush runs epochs 1 and 2 at once; epoch 1 fails (a sink
    outage), the stop times out and the user resumes: epoch 2 still runs, waiting
    for epoch 1's commit. The retry of epoch 1 must not wait for epoch 2 to give up
    (PREDECESSOR_TIMEOUT_SECONDS, 2 minutes: a CI run saw ingest stall that long)."""
    pipeline_id = _running(service, "waits")
    for count in (3, 4):
        _ingest(service, "waits", count)
        buffer = EventBuffer(buffer_path(service.data_dir, pipeline_id))
        plan_epoch(service.store, pipeline_id, buffer, flush=True)
        buffer.close()
    jobs = JobManager(service.store.url, str(tmp_path), workers=2)
    try:
        jobs._recovered.discard(pipeline_id)  # as after epoch 1's failure was recorded
        jobs._submit(pipeline_id, 2, after_another=True)  # the flush's epoch 2, still waiting
        _tick_until(jobs, lambda: _committed(jobs.store, pipeline_id)
                    == [(1, "committed"), (2, "committed")], "epochs 1 and 2 committed")
    finally:
        jobs.close()
    assert service.get("waits")["events_out"] == 7
