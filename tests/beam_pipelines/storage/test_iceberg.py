"""Iceberg sinks: one append snapshot per epoch, every row once, re-runs add nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyiceberg")

from pyiceberg.catalog.sql import SqlCatalog

from beam_pipelines.catalog.store import EpochFile, Store, default_database_url
from beam_pipelines.errors import DefinitionError, StorageError
from beam_pipelines.runners.local import epochs
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.service import PipelineService
from beam_pipelines.storage.iceberg import (
    CATALOG_NAME,
    EPOCH_PROPERTY,
    PIPELINE_PROPERTY,
    default_catalog_uri,
)

SCHEMA = [{"name": "n", "type": "int64", "required": True}, {"name": "country", "type": "string"},
          {"name": "ts", "type": "timestamp", "required": True}]


@pytest.fixture
def service(tmp_path: Path) -> PipelineService:
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    # The test's own SQLite catalogs lie in tmp_path, outside the lake.
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"),
                           local_sink_roots=(str(tmp_path),))


def _create(service: PipelineService, **table: Any) -> str:
    created = service.create({
        "name": "orders", "schema": SCHEMA, "event_time_field": "ts",
        "sink": {"partition_by": "country={country}", "roll": {"max_events": 500},
                 "table": {"namespace": "analytics", "name": "orders", **table}}})
    return str(created["id"])


def _ingest(service: PipelineService, first: int, count: int) -> None:
    body = "\n".join(f'{{"n": {i}, "country": "{["de", "fr", "us"][i % 3]}", '
                     f'"ts": "2026-02-01T00:{i % 60:02d}:00Z"}}'
                     for i in range(first, first + count)).encode()
    assert service.ingest_json_lines("orders", body)["accepted"] == count


def _run_due_epochs(service: PipelineService, data_dir: str, pipeline_id: str) -> list[int]:
    buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
    done = []
    try:
        while (number := epochs.plan_epoch(service.store, pipeline_id, buffer, flush=True)):
            epochs.run_epoch(service.store, data_dir, pipeline_id, number,
                             local_sink_roots=(data_dir,))
            done.append(number)
    finally:
        buffer.close()
    return done


def _table(data_dir: str) -> Any:
    # A reader of its own: pyiceberg's default FileIO, not the writer's.
    catalog = SqlCatalog(CATALOG_NAME, uri=default_catalog_uri(data_dir))
    return catalog.load_table(("analytics", "orders"))


def _committed_files(service: PipelineService, pipeline_id: str) -> dict[str, int]:
    with service.store.session() as s:
        rows = s.query(EpochFile).filter(EpochFile.pipeline_id == pipeline_id).all()
        return {"file://" + f.path: f.bytes for f in rows}


def _data_files(table: Any) -> dict[str, int]:
    return {task.file.file_path: task.file.file_size_in_bytes for task in table.scan().plan_files()}


def test_each_epoch_is_one_snapshot_and_the_table_holds_every_row_once(
        service: PipelineService, tmp_path: Path) -> None:
    data_dir = str(tmp_path)
    pipeline_id = _create(service)
    for first in range(0, 2000, 500):
        _ingest(service, first, 500)
    assert _run_due_epochs(service, data_dir, pipeline_id) == [1, 2, 3, 4]

    table = _table(data_dir)
    assert table.location() == f"file://{tmp_path}/lake/orders"
    snapshots = table.metadata.snapshots
    assert [(s.summary[PIPELINE_PROPERTY], s.summary[EPOCH_PROPERTY]) for s in snapshots] == \
        [(pipeline_id, str(n)) for n in (1, 2, 3, 4)]
    assert [s.summary["added-records"] for s in snapshots] == ["500"] * 4
    rows = table.scan().to_arrow()
    assert rows.num_rows == 2000
    assert sorted(rows.column("n").to_pylist()) == list(range(2000))
    assert set(rows.column_names) == {"n", "country", "ts", "_ingested_at", "_event_time"}
    # The table and the store's manifest name the same files, with the same sizes.
    assert _data_files(table) == _committed_files(service, pipeline_id)
    # Metadata lives with the data, under the sink.
    assert os.listdir(tmp_path / "lake/orders/metadata")


def test_a_rerun_epoch_adopts_its_snapshot_and_adds_nothing(
        service: PipelineService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = str(tmp_path)
    pipeline_id = _create(service)
    _ingest(service, 0, 500)
    assert _run_due_epochs(service, data_dir, pipeline_id) == [1]
    _ingest(service, 500, 300)

    # The epoch appends to Iceberg, then the store commit fails (a crash there).
    real_commit = epochs.commit_epoch

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed before the store commit")

    monkeypatch.setattr(epochs, "commit_epoch", crash)
    buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
    number = epochs.plan_epoch(service.store, pipeline_id, buffer, flush=True)
    assert number == 2
    with pytest.raises(RuntimeError, match="killed"):
        epochs.run_epoch(service.store, data_dir, pipeline_id, number)
    assert len(_table(data_dir).metadata.snapshots) == 2
    assert service.get("orders")["epochs"] == 1
    written = {p: os.stat(p.removeprefix("file://")).st_mtime_ns
               for p in _data_files(_table(data_dir))}

    # The re-run finds epoch 2's snapshot: no new snapshot, files left as they are.
    monkeypatch.setattr(epochs, "commit_epoch", real_commit)
    result = epochs.run_epoch(service.store, data_dir, pipeline_id, number)
    assert result.rows_out == 300 and not result.already_committed
    assert {f.uri for f in result.files} == {
        p.removeprefix("file://") for p in written if "part-0000000002-" in p}
    assert all(f.min_event_time is not None for f in result.files)
    table = _table(data_dir)
    assert len(table.metadata.snapshots) == 2
    assert {p: os.stat(p.removeprefix("file://")).st_mtime_ns for p in _data_files(table)} == written
    assert _data_files(table) == _committed_files(service, pipeline_id)
    assert sorted(table.scan().to_arrow().column("n").to_pylist()) == list(range(800))
    # Running a committed epoch again is a no-op on both sides.
    assert epochs.run_epoch(service.store, data_dir, pipeline_id, number).already_committed
    assert len(_table(data_dir).metadata.snapshots) == 2
    buffer.close()


def test_a_new_sql_column_is_added_to_the_table(service: PipelineService, tmp_path: Path) -> None:
    data_dir = str(tmp_path)
    pipeline_id = _create(service)
    _ingest(service, 0, 100)
    _run_due_epochs(service, data_dir, pipeline_id)
    service.transform("orders", {"sql": "SELECT *, n * 2 AS doubled FROM events"})
    _ingest(service, 100, 100)
    _run_due_epochs(service, data_dir, pipeline_id)

    rows = _table(data_dir).scan().to_arrow().sort_by("n").to_pylist()
    assert len(rows) == 200
    assert [r["doubled"] for r in rows[:100]] == [None] * 100
    assert [r["doubled"] for r in rows[100:]] == [2 * n for n in range(100, 200)]


def test_an_unreachable_catalog_fails_the_epoch_and_commits_nothing(
        service: PipelineService, tmp_path: Path) -> None:
    data_dir = str(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    pipeline_id = _create(service, catalog_uri=f"sqlite:///{blocker}/catalog.sqlite")
    _ingest(service, 0, 100)
    with pytest.raises(StorageError, match="epoch 1 failed"):
        _run_due_epochs(service, data_dir, pipeline_id)
    info = service.get("orders")
    assert info["epochs"] == 0 and info["backlog_events"] == 100


def test_the_table_definition_is_checked_at_create(service: PipelineService) -> None:
    bad = [({"name": "t", "location": "x"}, "unknown sink.table keys ['location']"),
           ({"namespace": "a"}, "sink.table.name is required"),
           ({"name": "a.b"}, "must not contain '.'"),
           ({"name": "t", "catalog_uri": "not a url:pw"}, "must be a SQLAlchemy URL")]
    for table, message in bad:
        with pytest.raises(DefinitionError, match=message.replace("[", r"\[").replace("]", r"\]")):
            service.create({"name": "t1", "sink": {"table": table}})
    with pytest.raises(DefinitionError, match="needs format parquet"):
        service.create({"name": "t2", "sink": {"format": "jsonl", "table": {"name": "t"}}})


def test_a_field_added_to_the_schema_becomes_an_optional_table_column(
        service: PipelineService, tmp_path: Path) -> None:
    data_dir = str(tmp_path)
    pipeline_id = _create(service)
    _ingest(service, 0, 100)
    _run_due_epochs(service, data_dir, pipeline_id)
    assert "x" not in _table(data_dir).schema().column_names

    service.transform("orders", {"schema": [*SCHEMA, {"name": "x", "type": "float64"}]})
    body = "\n".join(f'{{"n": {i}, "country": "de", "ts": "2026-02-01T00:00:00Z", "x": {i}.5}}'
                     for i in range(100, 150)).encode()
    assert service.ingest_json_lines("orders", body)["accepted"] == 50
    _run_due_epochs(service, data_dir, pipeline_id)

    table = _table(data_dir)
    column = table.schema().find_field("x")
    assert not column.required and str(column.field_type) == "double"
    rows = table.scan().to_arrow().sort_by("n").to_pylist()
    assert [r["n"] for r in rows] == list(range(150))
    assert [r["x"] for r in rows] == [None] * 100 + [i + 0.5 for i in range(100, 150)]
    assert _data_files(table) == _committed_files(service, pipeline_id)
