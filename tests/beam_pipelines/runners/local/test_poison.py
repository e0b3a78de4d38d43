"""A poisoned epoch: failed after its attempts, fixed with transform, resumed, nothing lost.

The real store, buffers, worker pool and FnApiRunner; the job manager is
ticked by the test, as its scheduler thread would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from beam_pipelines.catalog.store import Epoch, PipelineRow
from beam_pipelines.compiler.epoch_graph import EpochSpec
from beam_pipelines.errors import ConflictError, EpochError, TimeoutExceeded
from beam_pipelines.model.definition import definition_from_dict
from beam_pipelines.model.layout import part_file_name
from beam_pipelines.runners.local import scheduler
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.epochs import plan_epoch, run_epoch
from beam_pipelines.runners.local.plan_cache import run_epoch_pipeline
from beam_pipelines.runners.local.scheduler import JobManager
from beam_pipelines.service import PipelineService
from beam_pipelines.storage.errors import classify_epoch_error
from tests.live import query, wait_for
from transforms.decode import arrow_schema

SCHEMA = [{"name": "i", "type": "int64", "required": True}, {"name": "s", "type": "string"}]
POISONED_SQL = "SELECT i, CAST(s AS INTEGER) AS n FROM events"  # fails on 'x'
FIXED_SQL = "SELECT i, TRY_CAST(s AS INTEGER) AS n FROM events"


@pytest.fixture
def failures(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str, int]]:
    monkeypatch.setattr(scheduler, "MAX_ATTEMPTS", 2)  # PIPELINE_DO_EPOCH_MAX_ATTEMPTS=2
    return []


class _RecordFailures(scheduler.NoEvents):
    def __init__(self, failures: list[tuple[str, int, str, int]]) -> None:
        self.failures = failures

    def on_failed(self, pipeline_id: str, epoch: int, message: str, attempts: int) -> None:
        self.failures.append((pipeline_id, epoch, message, attempts))


@pytest.fixture
def manager(service: PipelineService, tmp_path: Path,
            failures: list[tuple[str, int, str, int]]) -> Iterator[JobManager]:
    manager = JobManager(service.store.url, str(tmp_path), workers=1,
                         events=_RecordFailures(failures))
    yield manager
    manager.close()


def _create(service: PipelineService, name: str = "p", **sink: Any) -> str:
    return str(service.create({"name": name, "schema": SCHEMA, "sql": POISONED_SQL, "sink": {
        "roll": {"interval_seconds": 0.1}, **sink}})["id"])


def _ingest(service: PipelineService, values: list[str], name: str = "p") -> None:
    body = "\n".join(f'{{"i": {i}, "s": "{v}"}}' for i, v in enumerate(values)).encode()
    assert service.ingest_json_lines(name, body)["accepted"] == len(values)


def _tick_until(manager: JobManager, done: Any, message: str) -> Any:
    def ticked() -> Any:
        manager.tick()
        return done()
    return wait_for(ticked, timeout=120, interval=0.05, message=message)


def _status(service: PipelineService, name: str = "p") -> str:
    return str(service.get(name)["status"])


def _scratch(tmp_path: Path, name: str = "p") -> list[str]:
    root = tmp_path / "lake" / name / "_tmp"
    return [str(p) for p in root.rglob("*")] if root.exists() else []


def test_a_poisoned_epoch_fails_the_pipeline_once_then_transform_and_resume_write_it_all(
        service: PipelineService, manager: JobManager, tmp_path: Path,
        failures: list[tuple[str, int, str, int]]) -> None:
    pipeline_id = _create(service)
    values = [str(n) for n in range(11)] + ["x"]  # 11 good events, one the SQL cannot cast
    _ingest(service, values)
    service.transition("p", "start")
    _tick_until(manager, lambda: _status(service) == "failed", "the pipeline to fail")

    info = service.get("p")
    assert info["epochs"] == 0 and info["backlog_events"] == 12 and info["errors"] == 2
    assert info["last_error"].startswith("epoch 1 failed: SQL_ERROR: Conversion Error"), \
        info["last_error"]
    assert info["last_error"].endswith("(attempt 2 of 2)")
    assert [(f[0], f[1], f[3]) for f in failures] == [(pipeline_id, 1, 2)]
    assert _scratch(tmp_path) == []
    for _ in range(10):  # the manager leaves a failed pipeline alone
        manager.tick()
    assert service.get("p")["errors"] == 2 and len(failures) == 1
    logs = service.logs("p", {"level": "error"})["logs"]
    assert [e["epoch"] for e in logs] == [1, 1] and "no longer retried" in logs[-1]["message"]
    text = repr(logs) + info["last_error"]
    assert str(tmp_path) not in text and "Traceback" not in text and "Exception" not in text

    assert service.transform("p", {"sql": FIXED_SQL})["version"] == 2
    service.transition("p", "resume")
    _tick_until(manager, lambda: service.get("p")["backlog_events"] == 0, "the epoch to commit")
    with service.store.reading() as s:
        epoch = s.scalars(select(Epoch).where(Epoch.pipeline_id == pipeline_id)).one()
        assert (epoch.status, epoch.sql_version, epoch.attempts) == ("committed", 2, 1)
    assert len(failures) == 1 and _status(service) == "running"
    assert _scratch(tmp_path) == []
    rows = query(f"SELECT i, n FROM read_parquet('{tmp_path}/lake/p/**/*.parquet') ORDER BY i")
    assert rows == [(i, i) for i in range(11)] + [(11, None)]  # each event once


def test_failed_attempts_leave_nothing_in_tmp_and_a_fixed_sink_takes_every_event_once(
        service: PipelineService, manager: JobManager, tmp_path: Path) -> None:
    """A file where a partition directory must be (a failure that holds as root): the
    partition before it was already written to ``_tmp/`` when the attempt fails."""
    service.create({"name": "p", "schema": SCHEMA, "sql": "SELECT i, s AS k FROM events",
                    "sink": {"partition_by": "k={k}", "roll": {"interval_seconds": 0.1}}})
    lake = tmp_path / "lake" / "p"
    lake.mkdir(parents=True)
    (lake / "k=b").write_text("in the way")
    _ingest(service, ["a", "b", "a"])
    service.transition("p", "start")
    _tick_until(manager, lambda: _status(service) == "failed", "the pipeline to fail")
    info = service.get("p")
    assert info["last_error"] == ("epoch 1 failed (sink local): SINK_WRITE_FAILED: the sink "
                                  "refused the write: File exists (attempt 2 of 2)")
    assert _scratch(tmp_path) == [] and list(lake.rglob("*.parquet")) == []

    (lake / "k=b").unlink()  # the fix
    service.transition("p", "resume")
    _tick_until(manager, lambda: service.get("p")["backlog_events"] == 0, "the epoch to commit")
    assert not (lake / "_tmp").exists()
    assert query(f"SELECT i, k FROM read_parquet('{lake}/*/*.parquet', hive_partitioning=false) "
                 "ORDER BY i") == [(0, "a"), (1, "b"), (2, "a")]


def test_a_running_pipeline_retries_with_the_sql_of_a_transform_made_meanwhile(
        service: PipelineService, manager: JobManager, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "MAX_ATTEMPTS", 1000)
    pipeline_id = _create(service)
    _ingest(service, ["1", "x", "3"])
    service.transition("p", "start")
    _tick_until(manager, lambda: service.get("p")["errors"] >= 1, "a failed attempt")
    assert service.transform("p", {"sql": FIXED_SQL})["version"] == 2
    _tick_until(manager, lambda: service.get("p")["backlog_events"] == 0, "the epoch to commit")
    with service.store.reading() as s:
        epoch = s.scalars(select(Epoch).where(Epoch.pipeline_id == pipeline_id)).one()
        assert (epoch.epoch, epoch.sql_version) == (1, 2)
    assert query(f"SELECT i, n FROM read_parquet('{tmp_path}/lake/p/*.parquet') ORDER BY i") \
        == [(0, 1), (1, None), (2, 3)]


def test_a_retry_with_new_sql_discards_the_files_a_killed_attempt_left(
        service: PipelineService, tmp_path: Path) -> None:
    """An attempt killed after its files were in place, before the commit: the retry
    writes other partitions (new SQL), and the old attempt's files must not stay."""
    pipeline_id = str(service.create({
        "name": "p", "schema": SCHEMA, "sql": "SELECT i, s AS k FROM events",
        "sink": {"partition_by": "k={k}", "roll": {"interval_seconds": 3600}}})["id"])
    _ingest(service, ["a", "b", "a"])
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    try:
        epoch_no = plan_epoch(service.store, pipeline_id, buffer, flush=True)
    finally:
        buffer.close()
    assert epoch_no == 1
    with service.store.session() as s:
        epoch = s.scalars(select(Epoch).where(Epoch.pipeline_id == pipeline_id)).one()
        epoch.attempts = 1  # as run_epoch counts it before the worker is killed
        row = s.get(PipelineRow, pipeline_id)
        assert row is not None
        sink = definition_from_dict(row.definition_dict()).sink
        spec = EpochSpec(pipeline_id=pipeline_id, epoch=1, range_start=epoch.range_start,
                         range_end=epoch.range_end, sql="SELECT i, s AS k FROM events",
                         buffer_path=buffer_path(str(tmp_path), pipeline_id),
                         input_schema=arrow_schema(definition_from_dict(
                             row.definition_dict()).schema),
                         sink=sink, planned_at=epoch.planned_at,
                         manifest_path=str(tmp_path / "tmp" / f"{pipeline_id}-1.manifest.json"))
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    assert {e.partition for e in run_epoch_pipeline(spec)} == {"k=a", "k=b"}  # then: kill -9
    service.transform("p", {"sql": "SELECT i, upper(s) AS k FROM events"})

    result = run_epoch(service.store, str(tmp_path), pipeline_id, 1)
    lake = tmp_path / "lake" / "p"
    assert sorted(str(p.relative_to(lake)) for p in lake.rglob("*.parquet")) == [
        part_file_name(pipeline_id, 1, 0, "parquet", "k=A"),
        part_file_name(pipeline_id, 1, 0, "parquet", "k=B")]
    assert sorted(f.uri for f in result.files) == sorted(
        str(p) for p in lake.rglob("*.parquet"))
    assert query(f"SELECT count(*) FROM read_parquet('{lake}/**/*.parquet')") == [(3,)]
    assert _scratch(tmp_path) == [] and not Path(spec.manifest_path).exists()


def test_a_stop_that_times_out_leaves_stopping_from_which_resume_and_stop_work(
        service: PipelineService, manager: JobManager, tmp_path: Path) -> None:
    _create(service, "q")
    _ingest(service, ["1", "x"], "q")
    service.transition("q", "start")
    with pytest.raises(TimeoutExceeded):
        service.stop("q", timeout_s=0.0)  # nobody ticks: the flush cannot end
    assert _status(service, "q") == "stopping"
    with pytest.raises(TimeoutExceeded):
        service.stop("q", timeout_s=0.0)  # stop again: waits for the same flush
    assert service.transition("q", "resume")["status"] == "running"
    service.transition("q", "stop")
    assert service.transition("q", "start")["status"] == "running"

    # From failed: stop flushes again (with a fresh budget), and ends the wait as a
    # conflict when the flush fails for good; delete works.
    _tick_until(manager, lambda: _status(service, "q") == "failed", "the pipeline to fail")
    service.transition("q", "stop")
    with service.store.reading() as s:
        attempts = s.scalars(select(Epoch.attempts).where(Epoch.status == "planned")).all()
    assert attempts == [0]
    manager.start()  # ticks on its own thread while stop waits
    with pytest.raises(ConflictError, match="failed"):
        service.stop("q", timeout_s=120.0)
    with pytest.raises(ConflictError):
        service.transition("q", "pause")
    assert service.delete("q") == {"deleted": True}


def test_failures_are_classified_with_a_code_and_no_server_path(tmp_path: Path) -> None:
    from beam_pipelines.model.definition import Sink

    local = Sink(uri=str(tmp_path / "lake"))
    too_long = RuntimeError(f"OSError: [Errno 36] File name too long: '{tmp_path}/lake/k=xxx'")
    cases = [
        (local, too_long, "epoch 3 failed (sink local): SINK_WRITE_FAILED: the sink refused the "
                          "write: File name too long", False),
        (local, NotADirectoryError(20, "Not a directory", str(tmp_path / "lake" / "x")),
         "epoch 3 failed (sink local): SINK_WRITE_FAILED: the sink refused the write: "
         "Not a directory", False),
        (Sink(uri="s3://b/p"), ConnectionRefusedError(111, "Connection refused"),
         "epoch 3 failed (sink s3://b/p): SINK_UNAVAILABLE: the sink could not be reached "
         "(transient, retried with backoff)", True),
        (local, RuntimeError(f"IO Error: cannot open '{tmp_path}/x' [while running 'Sql/RunSql']"),
         "epoch 3 failed: SQL_ERROR: IO Error: cannot open '<path>'", False),
    ]
    for sink, err, message, transient in cases:
        error = classify_epoch_error(3, sink, err)
        assert isinstance(error, EpochError)
        assert (error.message, error.transient) == (message, transient)
        assert str(tmp_path) not in error.message
