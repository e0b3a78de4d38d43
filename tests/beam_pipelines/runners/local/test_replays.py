"""``replay`` in process: the real log, catalog, FnApiRunner epochs, Parquet read by DuckDB.

The end-to-end and crash tests through the real server are in
``tests/integration/test_replay.py``; these cover the parameters, the range
rules, pinning against retention, and the epoch protocol step by step.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from beam_pipelines.catalog.replays import ReplayEpoch
from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.errors import ConflictError, DefinitionError
from beam_pipelines.runners.local import epochs, replays
from beam_pipelines.runners.local.buffer import BufferHandles, EventBuffer, buffer_path
from beam_pipelines.runners.local.replays import replay_views, run_replay_epoch
from beam_pipelines.runners.local.retention import expire_retained
from beam_pipelines.service import PipelineService

SCHEMA = [{"name": "n", "type": "int64", "required": True}]


@pytest.fixture
def service(tmp_path: Path) -> PipelineService:
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _ingest(service: PipelineService, first: int, count: int) -> None:
    body = "\n".join(json.dumps({"n": i}) for i in range(first, first + count)).encode()
    assert service.ingest_json_lines("p", body)["accepted"] == count


def _commit_all(service: PipelineService, data_dir: str, pipeline_id: str) -> None:
    buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
    try:
        for _ in range(100):
            number = epochs.plan_epoch(service.store, pipeline_id, buffer, flush=True)
            if number is None:
                return
            epochs.run_epoch(service.store, data_dir, pipeline_id, number)
    finally:
        buffer.close()


def _run_replay(service: PipelineService, data_dir: str, replay_id: str) -> None:
    with service.store.reading() as s:
        numbers = list(s.scalars(ReplayEpoch.__table__.select()
                                 .with_only_columns(ReplayEpoch.epoch)
                                 .where(ReplayEpoch.replay_id == replay_id)))
    for number in numbers:
        run_replay_epoch(service.store, data_dir, replay_id, number)


def _digests(pattern: str) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
            for p in glob.glob(pattern, recursive=True)}


def _values(pattern: str, column: str = "n") -> list[Any]:
    with duckdb.connect() as con:
        return [r[0] for r in con.execute(
            f"SELECT {column} FROM read_parquet('{pattern}') ORDER BY 1").fetchall()]


@pytest.fixture
def ingested(service: PipelineService, tmp_path: Path) -> tuple[str, float]:
    """Three requests (0-9, 10-19, 20-29) committed in three epochs, one log segment
    each; returns the pipeline id and a time between the first two requests' ingest."""
    created = service.create({"name": "p", "schema": SCHEMA, "retention": {"seconds": 86400},
                              "sink": {"roll": {"max_events": 10}}})
    pipeline_id = str(created["id"])
    _ingest(service, 0, 10)
    _commit_all(service, str(tmp_path), pipeline_id)  # each commit seals its segment
    time.sleep(0.05)
    between = time.time()
    time.sleep(0.05)
    for first in (10, 20):
        _ingest(service, first, 10)
        _commit_all(service, str(tmp_path), pipeline_id)
    return pipeline_id, between


def test_replay_by_time_writes_the_range_once_under_new_sql_beside_the_live_files(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float]) -> None:
    pipeline_id, between = ingested
    live = _digests(str(tmp_path / "lake/p/**/*.parquet"))
    assert len(live) == 3
    service.transform("p", {"sql": "SELECT n * 100 AS n FROM events"})
    view = service.replay("p", {"until": _iso(between), "target": {"prefix": "p-v2"}})
    assert view["status"] == "running" and view["epochs_total"] == 1
    assert view["events_total"] == 10 and view["sql_version"] == 2
    assert view["range"]["first_offset"] == 1 and view["range"]["last_offset"] == 1
    _run_replay(service, str(tmp_path), view["id"])
    assert _values(str(tmp_path / "lake/p-v2/**/*.parquet")) == [i * 100 for i in range(10)]
    [done] = replay_views(service.store, pipeline_id)
    assert done["status"] == "done" and done["events_done"] == 10 and done["rows_out"] == 10
    assert _digests(str(tmp_path / "lake/p/**/*.parquet")) == live  # untouched, byte for byte
    # Running an epoch again after its commit changes nothing (exactly once).
    run_replay_epoch(service.store, str(tmp_path), view["id"], 1)
    assert len(_values(str(tmp_path / "lake/p-v2/**/*.parquet"))) == 10


def test_a_replay_seen_done_has_nothing_left_in_the_targets_tmp(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The commit makes the replay ``done``: whoever sees that lists the target at once.
    real_commit = replays.commit_replay_epoch
    scratch_at_commit: list[bool] = []

    def recording_commit(*args: Any, **kwargs: Any) -> Any:
        scratch_at_commit.append(os.path.exists(tmp_path / "lake/p-v2/_tmp"))
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(replays, "commit_replay_epoch", recording_commit)
    view = service.replay("p", {"first_offset": 1, "last_offset": 2,
                                "target": {"prefix": "p-v2"}})
    _run_replay(service, str(tmp_path), view["id"])
    assert scratch_at_commit == [False, False]
    assert _values(str(tmp_path / "lake/p-v2/**/*.parquet")) == list(range(20))


def test_replay_by_offsets_into_the_sink_itself_never_takes_a_live_name(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float]) -> None:
    live = _digests(str(tmp_path / "lake/p/**/*.parquet"))
    view = service.replay("p", {"first_offset": 2, "last_offset": 3, "sql_version": 1})
    assert view["epochs_total"] == 2 and view["target"]["prefix"] is None
    _run_replay(service, str(tmp_path), view["id"])
    replayed = {p: d for p, d in _digests(str(tmp_path / "lake/p/**/*.parquet")).items()
                if view["id"] in p}
    assert len(replayed) == 2
    assert {p: d for p, d in _digests(str(tmp_path / "lake/p/**/*.parquet")).items()
            if view["id"] not in p} == live
    assert _values(str(tmp_path / f"lake/p/**/*{view['id']}*.parquet")) == list(range(10, 30))


def test_dry_run_shows_new_sql_on_retained_committed_events_and_writes_nothing(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float]) -> None:
    result = service.replay("p", {"sql": "SELECT n + 1 AS m FROM events", "dry_run": True,
                                  "limit": 5, "first_offset": 3})
    assert result["dry_run"] is True and result["output_schema"] == [{"name": "m",
                                                                       "type": "int64"}]
    assert [r["m"] for r in result["rows"]] == [21, 22, 23, 24, 25]
    assert replay_views(service.store, ingested[0]) == []


@pytest.mark.parametrize(("params", "field"), [
    ({"since": "yesterday"}, "since"),
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
    ({"since": "2026-01-01T00:00:00Z", "first_offset": 1}, "since"),
    ({"first_offset": 0}, "first_offset"),
    ({"first_offset": 3, "last_offset": 2}, "last_offset"),
    ({"sql": "SELECT 1", "sql_version": 1}, "sql"),
    ({"sql_version": 9}, "sql_version"),
    ({"sql": "DELETE FROM events"}, "sql"),
    ({"target": {"prefix": "../escape"}}, "target.prefix"),
    ({"target": {"prefix": "/abs/path"}}, "target.prefix"),
    ({"target": {"prefix": "a/../b"}}, "target.prefix"),
    ({"target": {"prefix": "p"}}, "target.prefix"),
    ({"target": {"prefix": "p/inside"}}, "target.prefix"),
    ({"target": "elsewhere"}, "target"),
    ({"dry_run": "yes"}, "dry_run"),
    ({"form": 1}, "form"),
    ({"first_offset": 99}, "first_offset"),
])
def test_bad_parameters_name_the_field(service: PipelineService,
                                       ingested: tuple[str, float],
                                       params: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        service.replay("p", params)
    assert caught.value.details["field"] == field, caught.value


def test_a_released_range_is_refused_saying_what_is_retained(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float]) -> None:
    pipeline_id, between = ingested
    # Age the first two segments out (a later "now"), as retention's sweep does.
    handles = BufferHandles(str(tmp_path))
    buffer = handles.get(pipeline_id)
    first, last, _at = buffer.ranges().retained()
    assert (first, last) == (1, 3)
    import os

    from beam_pipelines.runners.local.buffer import log_directory
    from beam_pipelines.runners.local.segments import segment_seqs
    seg = segment_seqs(log_directory(buffer.path))
    old = time.time() - 90_000
    for s in seg[:2]:
        os.utime(os.path.join(log_directory(buffer.path), f"{s:020d}.arrows"), (old, old))
    assert expire_retained(service.store, handles) == 2
    handles.close()
    with pytest.raises(DefinitionError) as caught:
        service.replay("p", {"since": _iso(between - 60)})
    assert caught.value.details["field"] == "since"
    assert caught.value.details["earliest_retained_offset"] == 3
    assert "no longer" in str(caught.value) and "offsets 3 to 3" in str(caught.value)
    with pytest.raises(DefinitionError) as caught:
        service.replay("p", {"first_offset": 1})
    assert caught.value.details["earliest_retained_offset"] == 3


def test_a_running_replay_pins_its_range_against_retention(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float]) -> None:
    import os

    from beam_pipelines.runners.local.buffer import log_directory
    from beam_pipelines.runners.local.segments import segment_seqs

    pipeline_id, _between = ingested
    view = service.replay("p", {"first_offset": 2})
    handles = BufferHandles(str(tmp_path))
    directory = log_directory(handles.get(pipeline_id).path)
    old = time.time() - 90_000
    for s in segment_seqs(directory):
        os.utime(os.path.join(directory, f"{s:020d}.arrows"), (old, old))
    assert expire_retained(service.store, handles) == 1  # segment 1 only: 2.. are pinned
    assert segment_seqs(directory)[0] == 2
    _run_replay(service, str(tmp_path), view["id"])
    assert expire_retained(service.store, handles) >= 1  # done: no longer pinned
    handles.close()
    assert _values(str(tmp_path / f"lake/p/**/*{view['id']}*.parquet")) == list(range(10, 30))


def test_distributed_pipelines_are_refused(service: PipelineService) -> None:
    service.create({"name": "flow", "schema": SCHEMA,
                    "runner": {"type": "dataflow", "options": {
                        "project": "p", "region": "r", "temp_location": "gs://b/t"}}})
    with pytest.raises(ConflictError) as caught:
        service.replay("flow", {})
    assert "keeps no retained log" in str(caught.value)


def test_deleting_the_pipeline_drops_its_replays(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float]) -> None:
    view = service.replay("p", {})
    service.delete("p")
    with service.store.reading() as s:
        assert s.scalars(ReplayEpoch.__table__.select().where(
            ReplayEpoch.replay_id == view["id"])).all() == []


# -- on the job manager (real worker pool) ------------------------------------------------


@pytest.fixture
def manager(service: PipelineService, tmp_path: Path) -> Any:
    from beam_pipelines.runners.local.scheduler import JobManager

    jobs = JobManager(service.store.url, str(tmp_path), workers=1)  # ticked by the test
    yield jobs
    jobs.close()


def _tick_until(manager: Any, done: Any, message: str) -> Any:
    from tests.live import wait_for

    def ticked() -> Any:
        manager.tick()
        return done()
    return wait_for(ticked, timeout=120, interval=0.05, message=message)


def test_the_job_manager_runs_a_replay_of_a_paused_pipeline_and_announces_each_epoch(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float],
        manager: Any) -> None:
    pipeline_id, _between = ingested
    service.transition("p", "start")
    service.transition("p", "pause")
    heard: list[Any] = []
    manager._replays._events = type("Heard", (), {"on_committed": lambda _s, r: heard.append(r)})()
    view = service.replay("p", {"sql": "SELECT n, n * 3 AS m FROM events",
                                "target": {"prefix": "p-x3"}})
    # The worker commits before the manager collects the result: wait for both.
    _tick_until(manager, lambda: replay_views(service.store, pipeline_id)[0]["status"] == "done"
                and len(heard) == 3, "the replay done and announced")
    assert sorted(r.epoch for r in heard) == [1, 2, 3]
    assert {r.replay for r in heard} == {view["id"]}
    assert _values(str(tmp_path / "lake/p-x3/**/*.parquet"), "m") == [3 * i for i in range(30)]
    assert service.get("p")["status"] == "paused" and service.get("p")["epochs"] == 3


def test_deleting_the_pipeline_cancels_its_replay_in_flight(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float],
        manager: Any) -> None:
    view = service.replay("p", {"target": {"prefix": "p-gone"}})
    _tick_until(manager, lambda: view["id"] in manager._replays._flights, "a replay in flight")
    service.delete("p")
    _tick_until(manager, lambda: not manager._replays._flights, "the flight cancelled")
    assert manager._pool is not None and manager._pool.problem() is None
    with service.store.reading() as s:
        assert s.scalars(ReplayEpoch.__table__.select().where(
            ReplayEpoch.replay_id == view["id"])).all() == []


def test_cancel_stops_a_replay_keeps_what_committed_and_releases_its_pin(
        service: PipelineService, tmp_path: Path, ingested: tuple[str, float],
        manager: Any) -> None:
    from beam_pipelines.catalog.replays import pinned_after
    from beam_pipelines.errors import ConflictError, NotFoundError

    pipeline_id, _between = ingested
    view = service.replay("p", {"target": {"prefix": "p-cut"}})
    with service.store.reading() as s:
        assert pinned_after(s, pipeline_id) == 0
    _tick_until(manager, lambda: view["id"] in manager._replays._flights, "a replay in flight")
    cancelled = service.replay("p", {"cancel": view["id"]})
    assert cancelled["status"] == "cancelled"
    _tick_until(manager, lambda: not manager._replays._flights, "the flight over")
    for _ in range(5):
        manager.tick()  # nothing more is submitted
    assert not manager._replays._flights
    [after] = replay_views(service.store, pipeline_id)
    assert after["status"] == "cancelled" and after["epochs_done"] < 3
    with service.store.reading() as s:
        assert pinned_after(s, pipeline_id) is None
    files = glob.glob(str(tmp_path / "lake/p-cut/**/*.parquet"), recursive=True)
    assert len([f for f in files if "/_tmp/" not in f]) == after["files_written"]
    with pytest.raises(ConflictError):
        service.replay("p", {"cancel": view["id"]})
    with pytest.raises(NotFoundError):
        service.replay("p", {"cancel": "rp_000000000000"})
