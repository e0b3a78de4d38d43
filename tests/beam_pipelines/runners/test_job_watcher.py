"""The job watcher on a real catalog, without a broker: unanswered engines, jobless stops,
and the local job manager leaving distributed pipelines alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from beam_pipelines.catalog.store import EngineJob, LogEntry, PipelineRow, Store
from beam_pipelines.runners.base import JobHandle, JobState, JobView, RunnerRegistry
from beam_pipelines.runners.distributed import DistributedRunner
from beam_pipelines.runners.job_watcher import JobWatcher
from beam_pipelines.runners.local.runner import LocalRunner
from beam_pipelines.runners.local.scheduler import JobManager
from beam_pipelines.runners.transports.pubsub import PubSubTransport
from beam_pipelines.service import PipelineService
from tests.beam_pipelines.runners.recording_engine import RecordingEngine


class Heard:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []
        self.stopped: list[str] = []

    def on_committed(self, result: object) -> None:
        raise AssertionError("a distributed pipeline commits no epoch")

    def on_failed(self, pipeline_id: str, epoch: int, message: str, attempts: int) -> None:
        self.failed.append((pipeline_id, message))

    def on_stopped(self, pipeline_id: str) -> None:
        self.stopped.append(pipeline_id)


class SlowEngine(RecordingEngine):
    """Its ``view`` waits for ``answer`` (set by the test), or raises ``broken``."""

    def __init__(self) -> None:
        super().__init__(PubSubTransport(None))
        self.answer = threading.Event()
        self.broken: Exception | None = None

    def view(self, handle: JobHandle) -> JobView:
        if self.broken is not None:
            raise self.broken
        self.answer.wait(10)
        return super().view(handle)


@pytest.fixture
def service(tmp_path: Path) -> PipelineService:
    from beam_pipelines.catalog.store import default_database_url

    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    engine = RecordingEngine(PubSubTransport(None))
    registry = RunnerRegistry({"direct": LocalRunner(store, str(tmp_path)),
                               "dataflow": DistributedRunner(store, str(tmp_path), engine)})
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"),
                           runners=registry)


def _pipeline(service: PipelineService, name: str, status: str, job_id: str | None) -> str:
    pipeline_id = str(service.create({"name": name, "runner": {"type": "dataflow",
                                                              "options": {"project": "p"}}})["id"])
    with service.store.session() as s:
        s.get(PipelineRow, pipeline_id).status = status  # type: ignore[union-attr]
        if job_id is not None:
            s.add(EngineJob(pipeline_id=pipeline_id, engine="dataflow", job_id=job_id,
                            job_name="n", state=JobState.RUNNING, state_at=time.time(),
                            metrics="{}"))
    return pipeline_id


def _status(service: PipelineService, pipeline_id: str) -> str | None:
    with service.store.reading() as s:
        return s.scalar(select(PipelineRow.status).where(PipelineRow.id == pipeline_id))


def _logs(service: PipelineService, pipeline_id: str) -> list[str]:
    with service.store.reading() as s:
        return list(s.scalars(select(LogEntry.message).where(LogEntry.pipeline_id == pipeline_id)
                              .order_by(LogEntry.id)))


def test_an_engine_that_does_not_answer_is_logged_once_and_asked_again(
        service: PipelineService) -> None:
    engine = SlowEngine()
    engine.states["job-9"] = JobState.FAILED
    pipeline_id = _pipeline(service, "slow", "running", "job-9")
    heard = Heard()
    watcher = JobWatcher(service.store, {"dataflow": engine}, heard, call_timeout=0.2)
    try:
        watcher.tick()
        watcher.tick()
        assert _status(service, pipeline_id) == "running" and heard.failed == []
        unknown = [m for m in _logs(service, pipeline_id) if m.startswith("job state unknown")]
        assert unknown == ["job state unknown: the engine did not answer within 0.2 s; "
                           "asking again"]
        engine.states["job-9"] = JobState.RUNNING
        engine.answer.set()
        watcher.tick()
    finally:
        watcher.close()
    assert _status(service, pipeline_id) == "running" and heard.failed == []
    assert _logs(service, pipeline_id)[-1] == "the engine answers again"


def test_a_failed_job_fails_its_pipeline_once(service: PipelineService) -> None:
    engine = RecordingEngine(PubSubTransport(None))
    engine.states["job-9"] = JobState.FAILED
    engine.messages["job-9"] = "boom"
    pipeline_id = _pipeline(service, "failing", "running", "job-9")
    heard = Heard()
    watcher = JobWatcher(service.store, {"dataflow": engine}, heard)
    try:
        watcher.tick()
        watcher.tick()
    finally:
        watcher.close()
    assert _status(service, pipeline_id) == "failed"
    assert heard.failed == [(pipeline_id, "the dataflow job job-9 ended: FAILED: boom")]


def test_an_engine_error_is_logged_and_not_fatal(service: PipelineService) -> None:
    engine = SlowEngine()
    engine.broken = ConnectionError("refused")
    broken = _pipeline(service, "broken", "running", "job-1")
    heard = Heard()
    watcher = JobWatcher(service.store, {"dataflow": engine}, heard, call_timeout=2)
    try:
        watcher.tick()
    finally:
        watcher.close()
    assert _status(service, broken) == "running"
    assert "job state unknown: the engine could not be asked (ConnectionError); asking again" \
        in _logs(service, broken)


def test_a_stop_of_a_pipeline_that_never_ran_ends_without_an_engine(
        service: PipelineService) -> None:
    pipeline_id = _pipeline(service, "never", "stopping", None)
    heard = Heard()
    JobWatcher(service.store, {"dataflow": RecordingEngine(PubSubTransport(None))}, heard).tick()
    assert _status(service, pipeline_id) == "stopped" and heard.stopped == [pipeline_id]


def test_the_watcher_leaves_a_stopping_direct_pipeline_to_the_job_manager(
        service: PipelineService) -> None:
    """A direct pipeline has no engine job either, but its stop is a flush of its
    buffer: stopping it here returned 'stopped' with the events still unwritten
    (seen in the full suite: crash tests found no files after a stop)."""
    local = str(service.create({"name": "local"})["id"])
    with service.store.session() as s:
        s.get(PipelineRow, local).status = "stopping"  # type: ignore[union-attr]
    heard = Heard()
    JobWatcher(service.store, {"dataflow": RecordingEngine(PubSubTransport(None))}, heard).tick()
    assert _status(service, local) == "stopping" and heard.stopped == []


def test_the_local_job_manager_leaves_distributed_pipelines_alone(
        service: PipelineService, tmp_path: Path) -> None:
    """A stopping direct pipeline with nothing buffered is stopped at the manager's
    next tick; a stopping dataflow one is the watcher's (its buffer is a ledger)."""
    remote = _pipeline(service, "remote", "stopping", "job-1")
    local = str(service.create({"name": "local"})["id"])
    with service.store.session() as s:
        s.get(PipelineRow, local).status = "stopping"  # type: ignore[union-attr]
    manager = JobManager(service.store.url, str(tmp_path), workers=1)
    try:
        manager.tick()
    finally:
        manager.close(1)
    assert (_status(service, local), _status(service, remote)) == ("stopped", "stopping")


def test_an_ended_job_of_a_pipeline_that_no_longer_runs_is_not_asked_again(
        service: PipelineService) -> None:
    engine = RecordingEngine(PubSubTransport(None))
    engine.states.update({"job-1": JobState.DRAINED, "job-2": JobState.DRAINED})
    stopped = _pipeline(service, "done", "stopped", "job-1")
    paused = _pipeline(service, "resting", "paused", "job-2")
    with service.store.session() as s:
        s.get(EngineJob, stopped).state = JobState.DRAINED  # type: ignore[union-attr]
        s.get(EngineJob, paused).state = JobState.DRAINING  # type: ignore[union-attr]
    watcher = JobWatcher(service.store, {"dataflow": engine}, Heard())
    try:
        watcher.tick()
        watcher.tick()
    finally:
        watcher.close()
    # The paused one's drain ended at the first look; nothing is asked after that.
    assert [c.handle.job_id for c in engine.calls if c.name == "view"] == ["job-2"]
    assert _status(service, paused) == "paused"
    assert "dataflow job job-2: DRAINING → DRAINED" in _logs(service, paused)


def test_a_stop_waits_no_longer_than_its_timeout_for_an_engine_that_hangs(
        service: PipelineService, tmp_path: Path) -> None:
    from beam_pipelines.errors import TimeoutExceeded

    engine = SlowEngine()
    engine.states["job-1"] = JobState.DRAINED
    pipeline_id = _pipeline(service, "hung", "stopping", "job-1")
    runner = DistributedRunner(service.store, str(tmp_path), engine)
    try:
        with pytest.raises(TimeoutExceeded, match="did not say whether the job has drained"):
            runner.wait_stopped(pipeline_id, 0.3)
        assert _status(service, pipeline_id) == "stopping"
    finally:
        engine.answer.set()
    runner.wait_stopped(pipeline_id, 10)  # the engine answers: DRAINED
    assert _status(service, pipeline_id) == "stopped"
