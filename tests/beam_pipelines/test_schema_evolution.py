"""Additive schema evolution through PipelineService and the LocalRunner's epochs.

Files are read back with DuckDB; epochs run as the job manager runs them
(``plan_epoch`` + ``run_epoch`` on the real buffer and FnApiRunner).
"""

from __future__ import annotations

import glob
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import pytest

from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.errors import ConflictError, DefinitionError
from beam_pipelines.runners.local import epochs
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.service import PipelineService

SCHEMA: list[dict[str, Any]] = [{"name": "n", "type": "int64", "required": True},
                                {"name": "s", "type": "string"}]
WIDER: list[dict[str, Any]] = [*SCHEMA, {"name": "x", "type": "float64", "required": False}]


@pytest.fixture
def service(tmp_path: Path) -> PipelineService:
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"))


def _create(service: PipelineService, **more: Any) -> str:
    return str(service.create({"name": "p", "schema": SCHEMA, **more})["id"])


def _lines(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in records)


def _run_due_epochs(service: PipelineService, data_dir: str, pipeline_id: str) -> list[int]:
    buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
    done = []
    try:
        while (number := epochs.plan_epoch(service.store, pipeline_id, buffer, flush=True)):
            epochs.run_epoch(service.store, data_dir, pipeline_id, number)
            done.append(number)
    finally:
        buffer.close()
    return done


def _files(tmp_path: Path) -> list[str]:
    return sorted(glob.glob(str(tmp_path / "lake/p/**/*.parquet"), recursive=True))


def _read(files: list[str], columns: str) -> list[tuple[Any, ...]]:
    return duckdb.connect().execute(f"SELECT {columns} FROM read_parquet(?, union_by_name = "
                                    "true) ORDER BY n", [files]).fetchall()


def _columns(files: list[str]) -> list[str]:
    return [r[0] for r in duckdb.connect().execute(
        "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [files]).fetchall()]


@pytest.mark.parametrize(("schema", "field", "reason"), [
    ([SCHEMA[0]], "schema", "field 's' is removed"),
    ([SCHEMA[0], {"name": "t", "type": "string"}], "schema[1].name",
     "field 's' is renamed to 't'"),
    ([SCHEMA[0], {"name": "s", "type": "int64"}], "schema[1].type",
     "field 's' changes type from string to int64"),
    ([SCHEMA[0], {"name": "s", "type": "string", "required": True}], "schema[1].required",
     "field 's' is made required"),
    ([{"name": "n", "type": "int64"}, SCHEMA[1]], "schema[0].required",
     "field 'n' is made optional"),
    ([*SCHEMA, {"name": "x", "type": "float64", "required": True}], "schema[2].required",
     "new field 'x' is required"),
    ([{"name": "x", "type": "float64"}, *SCHEMA], "schema[1].name",
     "field 'n' moves from position 0 to 1"),
    ([SCHEMA[1], SCHEMA[0]], "schema[1].name", "field 'n' moves from position 0 to 1"),
    ([*SCHEMA, {"name": "x", "type": "decimal"}], "schema[2].type", "unknown type 'decimal'"),
    ([*SCHEMA, {"name": "S", "type": "string"}], "schema[2].name", "duplicate field name"),
])
def test_a_change_that_is_not_additive_is_refused_naming_the_field_and_why(
        service: PipelineService, schema: list[dict[str, Any]], field: str, reason: str) -> None:
    _create(service)
    for dry_run in (False, True):
        with pytest.raises(DefinitionError) as raised:
            service.transform("p", {"schema": schema, "dry_run": dry_run})
        assert raised.value.field == field and reason in str(raised.value)
    got = service.get("p")
    assert got["version"] == 1 and got["schema"] == [{**f, "required": f.get("required", False)}
                                                     for f in SCHEMA]


def test_a_pipeline_without_a_schema_cannot_get_one(service: PipelineService) -> None:
    service.create({"name": "p"})
    with pytest.raises(DefinitionError) as raised:
        service.transform("p", {"schema": WIDER})
    assert raised.value.field == "schema" and "no schema" in str(raised.value)
    with pytest.raises(DefinitionError) as raised:
        service.transform("p", {})
    assert raised.value.field == "sql"


def test_sql_using_a_field_the_schema_lacks_plans_only_with_the_widened_schema(
        service: PipelineService) -> None:
    _create(service)
    with pytest.raises(DefinitionError) as raised:
        service.transform("p", {"sql": "SELECT n, x FROM events"})
    assert raised.value.field == "sql"
    planned = service.transform("p", {"sql": "SELECT n, x FROM events", "schema": WIDER,
                                      "dry_run": True})
    assert planned["output_schema"] == [{"name": "n", "type": "int64"},
                                        {"name": "x", "type": "double"}]
    assert service.get("p")["version"] == 1  # a dry run changes nothing


def test_a_widened_schema_lands_as_a_column_in_the_next_files_and_old_rows_read_null(
        service: PipelineService, tmp_path: Path) -> None:
    pipeline_id = _create(service)
    assert service.ingest_json_lines("p", _lines([{"n": i, "x": 0.5} for i in range(10)])) == {
        "accepted": 10, "rejected": [], "unknown_fields": ["x"]}  # dropped: not declared yet
    assert _run_due_epochs(service, str(tmp_path), pipeline_id) == [1]
    first = _files(tmp_path)
    before = {f: (os.path.getsize(f), os.stat(f).st_mtime_ns) for f in first}
    assert _columns(first) == ["n", "s", "_ingested_at", "_event_time"]

    # Frames buffered before the change, then the change, then frames with x: one epoch.
    service.ingest_json_lines("p", _lines([{"n": i, "x": 1.0} for i in range(10, 20)]))
    result = service.transform("p", {"schema": WIDER})
    assert result["version"] == 2
    assert [c["name"] for c in result["output_schema"]] == ["n", "s", "x", "_ingested_at",
                                                            "_event_time"]
    service.ingest_json_lines("p", _lines([{"n": i, "x": i / 2} for i in range(20, 30)]))
    dry = service.transform("p", {"sql": "SELECT n, x FROM events", "dry_run": True})
    assert sorted(dry["rows"], key=lambda r: r["n"]) == [
        {"n": i, "x": None if i < 20 else i / 2} for i in range(10, 30)]
    assert _run_due_epochs(service, str(tmp_path), pipeline_id) == [2]

    new = [f for f in _files(tmp_path) if f not in before]
    assert new and all("part-0000000002-" in f for f in new)
    assert _columns(new) == ["n", "s", "x", "_ingested_at", "_event_time"]
    assert _read(new, "n, x") == [(i, None if i < 20 else i / 2) for i in range(10, 30)]
    # the earlier files are untouched, and the whole lake reads with x null for them
    assert {f: (os.path.getsize(f), os.stat(f).st_mtime_ns) for f in first} == before
    assert _read(_files(tmp_path), "n, x") == [(i, None if i < 20 else i / 2)
                                               for i in range(30)]
    got = service.get("p")
    assert got["schema"][-1] == {"name": "x", "type": "float64", "required": False}
    with sqlite3.connect(tmp_path / "pipeline-do.sqlite") as con:
        stored = con.execute("SELECT version, input_schema FROM sql_versions "
                             "ORDER BY version").fetchall()
    assert [(v, [f["name"] for f in json.loads(s)]) for v, s in stored] == [
        (1, ["n", "s"]), (2, ["n", "s", "x"])]


def test_ingest_in_another_process_decodes_with_the_new_schema_at_once(
        service: PipelineService, tmp_path: Path) -> None:
    """Two services on one data dir stand for two API processes: the other one's
    cached definition must not outlive the transform."""
    _create(service, unknown_fields="reject")
    other = PipelineService(Store(default_database_url(str(tmp_path))), str(tmp_path),
                            default_sink_uri=str(tmp_path / "lake/{name}"))
    refused = other.ingest_json_lines("p", _lines([{"n": 1, "x": 1.5}]))
    assert refused["accepted"] == 0 and refused["rejected"][0]["code"] == "unknown_field"
    service.transform("p", {"schema": WIDER})
    assert other.ingest_json_lines("p", _lines([{"n": 2, "x": 2.5}])) == {
        "accepted": 1, "rejected": []}


def test_dead_letters_of_an_unknown_field_are_accepted_once_after_widening(
        service: PipelineService, tmp_path: Path) -> None:
    pipeline_id = _create(service, unknown_fields="reject")
    records = [{"n": i, "x": i + 0.25} if i % 3 == 0 else {"n": i} for i in range(30)]
    reply = service.ingest_json_lines("p", _lines(records))
    assert reply["accepted"] == 20
    assert {r["code"] for r in reply["rejected"]} == {"unknown_field"}
    letters = service.dead_letters("p", {"code": "unknown_field"})["dead_letters"]
    assert sorted(json.loads(d["record"])["n"] for d in letters) == list(range(0, 30, 3))

    # Before the fix a replay rejects them again, with the same reason.
    again = service.replay_dead_letters("p", {"code": "unknown_field"})
    assert again["accepted"] == 0 and {r["code"] for r in again["rejected"]} == {"unknown_field"}

    service.transform("p", {"schema": WIDER})
    replayed = service.replay_dead_letters("p", {"code": "unknown_field"})
    assert replayed == {"accepted": 10, "rejected": []}
    assert service.dead_letters("p", {})["dead_letters"] == []
    assert service.replay_dead_letters("p", {"code": "unknown_field"}) == {
        "accepted": 0, "rejected": []}  # nothing left: none accepted twice

    assert service.transition("p", "start")["status"] == "running"
    _run_due_epochs(service, str(tmp_path), pipeline_id)
    rows = _read(_files(tmp_path), "n, x")
    assert rows == [(i, i + 0.25 if i % 3 == 0 else None) for i in range(30)]


def test_a_transform_planned_across_another_schema_change_is_a_conflict_not_a_revert(
        service: PipelineService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _create(service)
    other = PipelineService(service.store, str(tmp_path),
                            default_sink_uri=str(tmp_path / "lake/{name}"))
    plan = service._plan

    def plan_while_another_widens(*args: Any) -> Any:
        monkeypatch.setattr(service, "_plan", plan)
        other.transform("p", {"schema": WIDER})  # commits between this one's read and write
        return plan(*args)

    monkeypatch.setattr(service, "_plan", plan_while_another_widens)
    with pytest.raises(ConflictError) as raised:
        service.transform("p", {"sql": "SELECT n FROM events"})
    assert raised.value.details == {"field": "schema"}
    got = service.get("p")
    assert got["version"] == 2 and [f["name"] for f in got["schema"]] == ["n", "s", "x"]
    assert service.transform("p", {"sql": "SELECT n, x FROM events"})["version"] == 3
