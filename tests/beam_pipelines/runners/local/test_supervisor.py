"""The supervisor on a real job manager, store and Flask app: a broken manager
is reported by /healthz (503, with the reason) and replaced."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from beam_pipelines.runners.local.epochs import EpochResult
from beam_pipelines.runners.local.scheduler import JobManager, NoEvents
from beam_pipelines.runners.local.supervisor import (
    HEARTBEAT_FILE,
    STALE_AFTER_SECONDS,
    ManagerSupervisor,
    manager_problem,
    write_heartbeat,
)
from beam_pipelines.service import PipelineService
from control_api import context, create_app
from tests.live import wait_for

SCHEMA = [{"name": "n", "type": "int64", "required": True}]


class _ThreadKiller(NoEvents):
    def on_committed(self, result: EpochResult) -> None:
        # A bug that raises what the scheduler loop does not catch ends its thread.
        raise SystemExit("a callback ended the scheduler thread")


class _Managers:
    """Starts job managers on one data dir; the first one's commit callback kills
    its scheduler thread, every later one is sound."""

    def __init__(self, service: PipelineService, data_dir: str) -> None:
        self.service = service
        self.data_dir = data_dir
        self.started: list[JobManager] = []

    def __call__(self) -> JobManager:
        manager = JobManager(self.service.store.url, self.data_dir, workers=1,
                             events=None if self.started else _ThreadKiller())
        manager.start()
        self.started.append(manager)
        return manager


@pytest.fixture
def app(tmp_path: Any) -> Any:
    return create_app({"DATA_DIR": str(tmp_path), "RATE_LIMIT": 0, "TESTING": True,
                       "RUN_JOB_MANAGER": True})


@pytest.fixture
def managers(app: Any, tmp_path: Any) -> Iterator[_Managers]:
    made = _Managers(context.of(app).service, str(tmp_path))
    yield made
    for manager in made.started:
        manager.close(10)


def _running_with_events(service: PipelineService, count: int) -> Callable[[], int]:
    service.create({"name": "p", "schema": SCHEMA,
                    "sink": {"roll": {"interval_seconds": 3600, "max_events": count}}})
    service.transition("p", "start")
    _ingest(service, count)
    return lambda: int(service.get("p")["events_out"])


def _ingest(service: PipelineService, count: int) -> None:
    body = "\n".join(f'{{"n": {i}}}' for i in range(count)).encode()
    assert service.ingest_json_lines("p", body)["accepted"] == count


# The first manager's scheduler thread ends on purpose; pytest would warn of it.
_thread_ends = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@_thread_ends
def test_a_manager_whose_scheduler_thread_died_is_a_503_until_it_is_replaced(
        app: Any, managers: _Managers) -> None:
    client = app.test_client()
    supervisor = ManagerSupervisor(managers, app.config["DATA_DIR"])
    supervisor.start(watch=False)
    assert client.get("/healthz").status_code == 200
    written = _running_with_events(managers.service, 4)
    wait_for(lambda: written() == 4, timeout=180, message="the first manager's commit")
    first = managers.started[0]
    wait_for(lambda: first.health() is not None, message="the scheduler thread to end")

    assert supervisor.diagnose() == "the job manager's scheduler thread is not running"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert "scheduler thread is not running" in body["error"]["message"]

    assert supervisor.check() is not None  # still broken: replaced now
    assert supervisor.manager is managers.started[1] and supervisor.restarts == 1
    assert supervisor.check() is None
    assert client.get("/healthz").status_code == 200
    _ingest(managers.service, 4)
    wait_for(lambda: written() == 8, timeout=180, message="the new manager's commit")


@_thread_ends
def test_the_supervisor_thread_notices_and_restarts_by_itself(
        app: Any, managers: _Managers) -> None:
    client = app.test_client()
    supervisor = ManagerSupervisor(managers, app.config["DATA_DIR"], interval=0.2)
    supervisor.start()
    try:
        written = _running_with_events(managers.service, 3)
        wait_for(lambda: supervisor.restarts == 1, message="the supervisor's restart")
        wait_for(lambda: client.get("/healthz").status_code == 200, message="healthy again")
        _ingest(managers.service, 3)
        wait_for(lambda: written() == 6, timeout=180, message="commits of the new manager")
    finally:
        supervisor.close(10)


def test_healthz_is_a_503_when_the_heartbeat_is_stale_or_missing(app: Any) -> None:
    data_dir = app.config["DATA_DIR"]
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "has not started" in response.get_json()["error"]["message"]
    write_heartbeat(data_dir, None)
    assert client.get("/healthz").status_code == 200
    with open(os.path.join(data_dir, HEARTBEAT_FILE)) as beat:
        written_at = json.load(beat)["written_at"]
    later = written_at + STALE_AFTER_SECONDS + 5
    assert "has not reported for" in str(manager_problem(data_dir, now=later))


def test_healthz_of_an_app_without_a_manager_checks_the_store_only(tmp_path: Any) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "RATE_LIMIT": 0, "TESTING": True})
    assert not app.config["RUN_JOB_MANAGER"]
    assert app.test_client().get("/healthz").status_code == 200  # no heartbeat, no manager
