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
