"""The epoch protocol on the real FnApiRunner: plan, run, commit, recover."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from beam_pipelines.catalog.store import Epoch, EpochFile
from beam_pipelines.compiler import epoch_graph
from beam_pipelines.compiler.epoch_graph import EpochSpec
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.epochs import commit_epoch, pending_epoch, plan_epoch, run_epoch
from beam_pipelines.runners.local.plan_cache import run_epoch_pipeline
from beam_pipelines.service import PipelineService
from beam_pipelines.storage.files import file_sizes
from tests.live import query
from transforms import sinks
from transforms.decode import arrow_schema


def _create(service: PipelineService, **sink: Any) -> str:
    created = service.create({
        "name": "p", "schema": [{"name": "n", "type": "int64", "required": True},
                                {"name": "ts", "type": "timestamp"}],
        "event_time_field": "ts", "sql": "SELECT n, n * 10 AS ten, _event_time FROM events "
                                         "WHERE n % 2 = 0",
        "sink": {"partition_by": "dt=%Y-%m-%d", "roll": {"interval_seconds": 3600,
                                                         "max_events": 100}, **sink}})
    return str(created["id"])


def _ingest(service: PipelineService, first: int, count: int) -> None:
    body = "\n".join(f'{{"n": {i}, "ts": "2026-02-0{1 + (i // 2) % 2}T00:00:00Z"}}'
                     for i in range(first, first + count)).encode()
    assert service.ingest_json_lines("p", body)["accepted"] == count


def _planned_first_epoch(service: PipelineService, tmp_path: Any, events: int) -> str:
    """A new pipeline with ``events`` ingested and all of them planned as epoch 1."""
    pipeline_id = _create(service)
    _ingest(service, 0, events)
    assert plan_epoch(service.store, pipeline_id,
                      EventBuffer(buffer_path(str(tmp_path), pipeline_id)), flush=True) == 1
    return pipeline_id


def _at_commit(monkeypatch: pytest.MonkeyPatch, record: Callable[[], object]) -> None:
    """Call ``record`` as ``run_epoch`` starts each commit, before the real one."""
    import beam_pipelines.runners.local.epochs as epochs_module

    real_commit = epochs_module.commit_epoch

    def recording_commit(*args: Any, **kwargs: Any) -> Any:
        record()
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(epochs_module, "commit_epoch", recording_commit)


def _rows(tmp_path: Any) -> list[tuple[int, int]]:
    return [(n, ten) for n, ten in query(
        f"SELECT n, ten FROM read_parquet('{tmp_path}/lake/p/**/*.parquet') ORDER BY n")]


def test_epochs_are_planned_by_the_roll_policy_and_commit_in_order(service: PipelineService,
                                                                   tmp_path: Any) -> None:
    pipeline_id = _create(service)
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    _ingest(service, 0, 60)
    assert plan_epoch(service.store, pipeline_id, buffer, flush=False) is None  # not due yet
    _ingest(service, 60, 60)
    # 120 events ≥ max_events 100: due; the epoch takes whole requests up to the limit.
    assert plan_epoch(service.store, pipeline_id, buffer, flush=False) == 1
    assert run_epoch(service.store, str(tmp_path), pipeline_id, 1).events == 60
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 2
    result = run_epoch(service.store, str(tmp_path), pipeline_id, 2)
    assert result.events == 60 and result.rows_out == 30
    assert _rows(tmp_path) == [(n, n * 10) for n in range(0, 120, 2)]
    names = sorted(os.path.relpath(p, tmp_path / "lake/p")
                   for p in glob.glob(f"{tmp_path}/lake/p/**/*.parquet", recursive=True))
    assert names == [f"dt=2026-02-01/part-0000000001-00000-{pipeline_id}.parquet",
                     f"dt=2026-02-01/part-0000000002-00000-{pipeline_id}.parquet",
                     f"dt=2026-02-02/part-0000000001-00000-{pipeline_id}.parquet",
                     f"dt=2026-02-02/part-0000000002-00000-{pipeline_id}.parquet"]
    # Committed rows leave the buffer; the counters say so.
    assert buffer.backlog(0).events == 0
    assert service.get("p")["events_out"] == 60
    assert service.get("p")["files_written"] == 4
    assert not os.path.exists(tmp_path / "lake/p/_tmp")


def test_a_crash_between_write_and_commit_reruns_the_same_epoch_exactly_once(
        service: PipelineService, tmp_path: Any) -> None:
    pipeline_id = _create(service)
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    _ingest(service, 0, 50)
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 1
    # The worker writes the files, then dies before the commit.
    with service.store.session() as s:
        epoch = s.scalars(select(Epoch)).one()
        spec_args = (epoch.range_start, epoch.range_end, epoch.planned_at)
    definition_sink = service._definition("p")[0].sink
    spec = EpochSpec(pipeline_id=pipeline_id, epoch=1, range_start=spec_args[0],
                     range_end=spec_args[1], sql="SELECT n, n * 10 AS ten, _event_time FROM "
                     "events WHERE n % 2 = 0", buffer_path=buffer.path,
                     input_schema=arrow_schema(service._definition("p")[0].schema),
                     sink=definition_sink, planned_at=spec_args[2],
                     manifest_path=str(tmp_path / "m.json"))
    entries = run_epoch_pipeline(spec)
    assert file_sizes(definition_sink, [e.path for e in entries], 1, pipeline_id)
    _ingest(service, 50, 10)  # more events arrive meanwhile

    # Recovery: the planned epoch is found and re-run with the same range.
    assert pending_epoch(service.store, pipeline_id) == 1
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 2  # the next one
    run_epoch(service.store, str(tmp_path), pipeline_id, 1)
    assert run_epoch(service.store, str(tmp_path), pipeline_id, 1).already_committed
    run_epoch(service.store, str(tmp_path), pipeline_id, 2)
    assert _rows(tmp_path) == [(n, n * 10) for n in range(0, 60, 2)]
    with service.store.session() as s:
        assert len(s.scalars(select(EpochFile).where(EpochFile.epoch == 1)).all()) == 2


def test_commit_refuses_an_epoch_out_of_order(service: PipelineService, tmp_path: Any) -> None:
    pipeline_id = _create(service)
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    _ingest(service, 0, 10)
    plan_epoch(service.store, pipeline_id, buffer, flush=True)
    _ingest(service, 10, 10)
    with service.store.session() as s:
        s.add(Epoch(pipeline_id=pipeline_id, epoch=5, range_start=1, range_end=2,
                    sql_version=1, status="planned", events=10, planned_at=0))
    with pytest.raises(RuntimeError, match="starts at 1"):
        commit_epoch(service.store, pipeline_id, 5, [])


def test_a_flush_cut_into_epochs_that_run_together_commits_them_in_order(
        service: PipelineService, tmp_path: Any) -> None:
    pipeline_id = _create(service)
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    for first in range(0, 80, 10):
        _ingest(service, first, 10)
    # Cut two ways: the first epoch takes half, the next the rest.
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True, ways=2) == 1
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 2
    assert pending_epoch(service.store, pipeline_id, exclude=[1]) == 2
    # Epoch 2 writes its files first; it may not commit before epoch 1 has.
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="committed through"):
        run_epoch(service.store, str(tmp_path), pipeline_id, 2, predecessor_timeout=0.5)
    assert time.monotonic() - started >= 0.5
    assert run_epoch(service.store, str(tmp_path), pipeline_id, 1).events == 40
    assert run_epoch(service.store, str(tmp_path), pipeline_id, 2,
                     predecessor_timeout=30).events == 40
    assert _rows(tmp_path) == [(n, n * 10) for n in range(0, 80, 2)]  # each row once
    assert buffer.backlog(0).events == 0


def test_a_new_sql_version_applies_from_the_next_epoch(service: PipelineService,
                                                       tmp_path: Any) -> None:
    pipeline_id = _create(service)
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    _ingest(service, 0, 4)
    plan_epoch(service.store, pipeline_id, buffer, flush=True)
    assert service.transform("p", {"sql": "SELECT n, n * 100 AS ten FROM events"})["version"] == 2
    _ingest(service, 4, 2)
    run_epoch(service.store, str(tmp_path), pipeline_id, 1)  # planned under version 1
    plan_epoch(service.store, pipeline_id, buffer, flush=True)
    run_epoch(service.store, str(tmp_path), pipeline_id, 2)
    assert _rows(tmp_path) == [(0, 0), (2, 20), (4, 400), (5, 500)]


def test_local_files_and_their_directories_are_fsynced_before_the_commit(
        service: PipelineService, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Power loss cannot be staged here; what can be checked is that every file
    # and directory entry the commit relies on was fsynced, and before it.
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    synced_at_commit: list[str] = []
    pipeline_id = _planned_first_epoch(service, tmp_path, 100)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    _at_commit(monkeypatch, lambda: synced_at_commit.extend(synced))
    result = run_epoch(service.store, str(tmp_path), pipeline_id, 1)
    files = [f.uri for f in result.files]
    assert len(files) == 2  # two event days
    lake = str(tmp_path / "lake" / "p")
    expected = {*files, lake, str(tmp_path / "lake"),
                *(os.path.dirname(f) for f in files)}
    assert expected <= set(synced_at_commit)


def test_whoever_sees_an_epoch_committed_finds_nothing_of_it_in_tmp(
        service: PipelineService, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A client (or the job manager's test) that sees the backlog gone lists the
    # sink at once: the epoch's scratch must be gone by the commit, not after it.
    scratch_at_commit: list[bool] = []
    pipeline_id = _planned_first_epoch(service, tmp_path, 10)
    _at_commit(monkeypatch, lambda: scratch_at_commit.append(
        os.path.exists(tmp_path / "lake/p/_tmp")))
    assert run_epoch(service.store, str(tmp_path), pipeline_id, 1).rows_out == 5
    assert scratch_at_commit == [False]
    assert not os.path.exists(tmp_path / "lake/p/_tmp")


def test_a_reading_session_is_one_snapshot(service: PipelineService, tmp_path: Any) -> None:
    # ``get`` reads counters and files in one session: an epoch committed
    # between the two reads must show in both or in neither.
    from beam_pipelines.catalog.store import PipelineRow

    pipeline_id = _planned_first_epoch(service, tmp_path, 10)
    with service.store.reading() as s:
        row = s.get(PipelineRow, pipeline_id)
        assert row is not None and row.epochs_committed == 0
        run_epoch(service.store, str(tmp_path), pipeline_id, 1)
        assert s.scalars(select(EpochFile).where(EpochFile.pipeline_id == pipeline_id)).all() == []
    assert service.get("p")["epochs"] == 1 and len(service.get("p")["files"]) == 2


def test_retention_keeps_committed_events_in_the_log_until_they_age_out(
        service: PipelineService, tmp_path: Any) -> None:
    from beam_pipelines.runners.local.buffer import BufferHandles, log_directory
    from beam_pipelines.runners.local.retention import expire_retained
    from beam_pipelines.runners.local.segments import segment_seqs

    created = service.create({"name": "kept", "retention": {"seconds": 600},
                              "schema": [{"name": "n", "type": "int64", "required": True}]})
    pipeline_id = str(created["id"])
    body = "\n".join(f'{{"n": {i}}}' for i in range(50)).encode()
    assert service.ingest_json_lines("kept", body)["accepted"] == 50
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 1
    run_epoch(service.store, str(tmp_path), pipeline_id, 1)
    # Committed: no longer backlog, but still in the log (sealed, readable).
    assert buffer.backlog(0).events == 0
    assert [n for _, n in buffer.ingested_times(0, 1)] == [50]
    assert segment_seqs(log_directory(buffer.path))[0] == 1
    handles = BufferHandles(str(tmp_path))  # the job manager's release thread keeps its own
    assert expire_retained(service.store, handles, now=time.time() + 60) == 0
    assert expire_retained(service.store, handles, now=time.time() + 601) == 1
    handles.close()
    assert segment_seqs(log_directory(buffer.path)) == [2]
    assert buffer.totals()["events_in"] == 50


def test_an_epoch_result_in_many_chunks_makes_one_file_per_partition_with_every_row(
        service: PipelineService, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQL's result reaches the writers in chunks (``EPOCH_CHUNK_ROWS``), the
    partitions interleaved within them: still one file per partition, its rows in
    full-size row groups, and one manifest entry adding up every piece."""
    monkeypatch.setattr(epoch_graph, "EPOCH_CHUNK_ROWS", 7)
    monkeypatch.setattr(sinks, "ROW_GROUP_ROWS", 8)
    pipeline_id = _create(service)
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    _ingest(service, 0, 90)  # days alternate every 2 events: both partitions in every chunk
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 1
    result = run_epoch(service.store, str(tmp_path), pipeline_id, 1)
    assert result.events == 90 and result.rows_out == 45
    assert _rows(tmp_path) == [(n, n * 10) for n in range(0, 90, 2)]
    by_partition = {f.partition: f for f in result.files}
    assert sorted(by_partition) == ["dt=2026-02-01", "dt=2026-02-02"]
    day1 = [n for n in range(0, 90, 2) if (n // 2) % 2 == 0]
    assert by_partition["dt=2026-02-01"].rows == len(day1) == 23
    assert by_partition["dt=2026-02-02"].rows == 45 - 23
    for entry in result.files:
        day = entry.partition[-2:]
        assert entry.min_event_time == entry.max_event_time == \
            datetime(2026, 2, int(day), tzinfo=timezone.utc).timestamp()
        parquet = pq.ParquetFile(entry.uri)
        groups = [parquet.metadata.row_group(i).num_rows
                  for i in range(parquet.metadata.num_row_groups)]
        assert sum(groups) == entry.rows and all(g == 8 for g in groups[:-1])
        # Rows keep the result's order within their partition.
        ns = parquet.read(columns=["n"]).column("n").to_pylist()
        assert ns == sorted(ns)
    with service.store.session() as s:
        stored = s.scalars(select(EpochFile).where(EpochFile.pipeline_id == pipeline_id)).all()
    assert sorted((os.path.basename(os.path.dirname(f.path)), f.rows) for f in stored) == [
        ("dt=2026-02-01", 23), ("dt=2026-02-02", 22)]
