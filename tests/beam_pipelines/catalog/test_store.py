"""The catalog's data-plane tables: a pipeline found by id or name, its log, one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from beam_pipelines.catalog.store import LogEntry, PipelineRow, Store, default_database_url, iso


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    return store


def _add(store: Store, pipeline_id: str = "pl_0123456789abcdef", name: str = "orders") -> None:
    with store.session() as s:
        s.add(PipelineRow(id=pipeline_id, name=name, status="created", version=1,
                          definition='{"name": "orders"}', created_at=0.0, updated_at=0.0))


def test_a_pipeline_is_found_by_id_or_by_name(store: Store) -> None:
    _add(store)
    with store.reading() as s:
        by_id = store.pipeline_by_ref(s, "pl_0123456789abcdef")
        by_name = store.pipeline_by_ref(s, "orders")
        assert by_id is not None and by_name is not None and by_id.id == by_name.id
        assert by_id.definition_dict() == {"name": "orders"}
        assert store.pipeline_by_ref(s, "pl_missing") is None


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.session() as s:
        s.add(PipelineRow(id="pl_1", name="a", status="created", definition="{}",
                          created_at=0.0, updated_at=0.0))
        s.flush()
        raise RuntimeError("after the insert")
    with store.reading() as s:
        assert s.scalars(select(PipelineRow)).all() == []


def test_log_entries_reply_in_iso_time(store: Store) -> None:
    store.log("pl_1", "info", "created", epoch=3)
    with store.reading() as s:
        (entry,) = s.scalars(select(LogEntry)).all()
        public, timestamp = entry.public(), entry.timestamp
    assert public["level"] == "info" and public["message"] == "created" and public["epoch"] == 3
    assert public["timestamp"] == iso(timestamp) and public["timestamp"].endswith("Z")
    assert iso(None) is None and iso(0.0) == "1970-01-01T00:00:00.000Z"


def test_an_older_catalog_gets_the_engine_jobs_location_column(tmp_path: Path) -> None:
    """A catalog made before ``engine_jobs.location``: create_all adds it, once; rows keep."""
    from sqlalchemy import inspect

    from beam_pipelines.catalog.store import EngineJob

    url = default_database_url(str(tmp_path))
    old = Store(url)
    old.create_all()
    with old.engine.begin() as conn:  # the table as the previous release made it
        conn.exec_driver_sql("DROP TABLE engine_jobs")
        conn.exec_driver_sql(
            "CREATE TABLE engine_jobs (pipeline_id VARCHAR(40) NOT NULL PRIMARY KEY "
            "REFERENCES pipelines (id) ON DELETE CASCADE, engine VARCHAR(16) NOT NULL, "
            "job_id VARCHAR(255) NOT NULL, job_name VARCHAR(255) NOT NULL, savepoint TEXT, "
            "state VARCHAR(32) NOT NULL, state_at FLOAT NOT NULL, metrics TEXT NOT NULL, "
            "message TEXT)")
    _add(old)
    with old.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO engine_jobs VALUES ('pl_0123456789abcdef', 'flink', "
                             "'j1', 'pipeline-do-x', NULL, 'JOB_STATE_RUNNING', 0, '{}', NULL)")
    old.dispose()

    recorded = '{"rest_url":"http://flink:8081"}'
    for start in range(2):  # a second start finds the column there, and the value kept
        store = Store(url)
        store.create_all()
        with store.engine.connect() as conn:
            columns = [c["name"] for c in inspect(conn).get_columns("engine_jobs")]
        assert columns.count("location") == 1
        with store.session() as s:
            job = s.get(EngineJob, "pl_0123456789abcdef")
            assert job is not None and job.job_id == "j1"
            assert job.location == (None if start == 0 else recorded)
            job.location = recorded
        store.dispose()
