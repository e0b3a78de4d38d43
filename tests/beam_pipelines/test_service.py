"""PipelineService through the Runner seam, on a LocalRunner over a temporary data dir."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from beam_pipelines.catalog.store import PipelineRow, Store, default_database_url
from beam_pipelines.errors import ConflictError, DefinitionError, NotFoundError, TimeoutExceeded
from beam_pipelines.runners.base import Runner, RunnerRegistry
from beam_pipelines.runners.local.buffer import buffer_path
from beam_pipelines.runners.local.runner import LocalRunner
from beam_pipelines.service import PipelineService

SCHEMA = [{"name": "n", "type": "int64", "required": True}]
REFUSAL = ("runner 'dataflow' is not available on this server: it runs the 'direct' runner "
           "only (no Dataflow or Flink launcher is configured)")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    return store


@pytest.fixture
def runner(store: Store, tmp_path: Path) -> LocalRunner:
    return LocalRunner(store, str(tmp_path))


@pytest.fixture
def service(store: Store, runner: LocalRunner, tmp_path: Path) -> PipelineService:
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"),
                           runners=RunnerRegistry({"direct": runner}))


def _create(service: PipelineService, name: str = "p", runner: str = "direct") -> str:
    return str(service.create({"name": name, "schema": SCHEMA, "sql": "SELECT n FROM events",
                               "runner": {"type": runner}})["id"])


def test_the_local_runner_is_a_runner(runner: LocalRunner) -> None:
    typed: Runner = runner  # checked by mypy: LocalRunner implements the protocol
    assert typed is runner


def test_create_makes_the_buffer_and_ingest_appends_through_the_runner(
        service: PipelineService, runner: LocalRunner, tmp_path: Path) -> None:
    pipeline_id = _create(service)
    assert Path(buffer_path(str(tmp_path), pipeline_id)).exists()
    reply = service.ingest_json_lines("p", b'{"n": 1}\n{"n": 2}\n{"n": "x"}\n')
    assert reply["accepted"] == 2 and len(reply["rejected"]) == 1
    counters = runner.ingest_counters(pipeline_id, 0)
    assert counters["events_in"] == 2 and counters["backlog_events"] == 2
    assert service.get("p")["events_in"] == 2


def test_status_moves_through_the_runner(service: PipelineService,
                                         runner: LocalRunner) -> None:
    pipeline_id = _create(service)
    assert runner.describe(pipeline_id)["status"] == "created"
    assert service.transition("p", "start")["status"] == "running"
    assert runner.describe(pipeline_id) == {"runner": "direct", "status": "running",
                                            "epochs_in_flight": []}
    assert service.transition("p", "pause")["status"] == "paused"
    with pytest.raises(ConflictError, match="cannot pause a pipeline that is paused"):
        service.transition("p", "pause")
    assert service.transition("p", "resume")["status"] == "running"


def test_stop_waits_for_the_flush_the_job_manager_reports(
        service: PipelineService, store: Store) -> None:
    pipeline_id = _create(service)
    service.transition("p", "start")
    with pytest.raises(TimeoutExceeded):  # no job manager here: nothing flushes
        service.stop("p", 0.1)
    assert service.get("p")["status"] == "stopping"

    def job_manager_flushes() -> None:  # what the scheduler does when the flush ends
        with store.session() as s:
            row = s.get(PipelineRow, pipeline_id)
            assert row is not None
            row.status = "stopped"

    timer = threading.Timer(0.2, job_manager_flushes)
    timer.start()
    stopped = service.stop("p", 10)  # stop while stopping: the same flush, waited for again
    timer.join()
    assert stopped["status"] == "stopped" and stopped["flushed_events"] == 0


def test_delete_drops_the_buffer_and_refuses_ingest(
        service: PipelineService, store: Store, tmp_path: Path) -> None:
    pipeline_id = _create(service)
    service.ingest_json_lines("p", b'{"n": 1}\n')
    service.transition("p", "start")
    assert service.delete("p") == {"deleted": True}
    assert not Path(buffer_path(str(tmp_path), pipeline_id)).exists()
    with store.reading() as s:
        assert s.scalar(select(PipelineRow.id)) is None
    with pytest.raises(NotFoundError):
        service.ingest_json_lines("p", b'{"n": 1}\n')


def test_a_runner_the_server_lacks_is_refused_at_start_only(
        service: PipelineService, runner: LocalRunner) -> None:
    pipeline_id = _create(service, "remote", runner="dataflow")
    # Defined and buffering like any pipeline: its events wait in the local runner.
    assert service.ingest_json_lines("remote", b'{"n": 1}\n')["accepted"] == 1
    assert runner.ingest_counters(pipeline_id, 0)["events_in"] == 1
    for operation in ("start", "stop"):
        with pytest.raises(DefinitionError) as refused:
            service.transition("remote", operation)
        assert str(refused.value) == REFUSAL
        assert refused.value.field == "runner.type"
    assert service.get("remote")["status"] == "created"
    assert service.delete("remote") == {"deleted": True}


def test_the_registry_refuses_by_type() -> None:
    runners = RunnerRegistry({"direct": _Unused()})  # type: ignore[dict-item]
    for runner_type in ("dataflow", "flink"):
        with pytest.raises(DefinitionError) as refused:
            runners.run(runner_type)
        assert str(refused.value) == REFUSAL.replace("'dataflow'", repr(runner_type))
    assert runners.holding("flink") is runners.run("direct")


class _Unused:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} was not expected")
