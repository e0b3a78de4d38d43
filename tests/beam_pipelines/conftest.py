"""Fixtures shared by the data plane's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.service import PipelineService


@pytest.fixture
def service(tmp_path: Path) -> PipelineService:
    """The service on a fresh catalog in ``tmp_path``, its lake at ``tmp_path/lake/<name>``.

    Modules whose tests need other local sink roots define their own.
    """
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"))
