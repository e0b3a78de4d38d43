"""Sink secrets are sealed in the store and opened only for the epoch that writes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from beam_pipelines.catalog.store import PipelineRow
from beam_pipelines.errors import StorageError
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.epochs import plan_epoch, run_epoch
from beam_pipelines.service import PipelineService
from beam_pipelines.storage.sealing import (
    KEY_FILE,
    SecretBox,
    SecretKeyError,
    seal_stored_definitions,
    unreadable_pipelines,
)
from tests.live import query

SECRETS = {"access_key_id": "AKIASEALEDTEST00001", "secret_access_key": "s3cr3t-Never-Stored",
           "credentials_file": "/secret/creds-never-stored.json"}
ENDPOINT = "http://minio:Endpoint-Pw-1@127.0.0.1:9/"
CATALOG = "postgresql://cat:Catalog-Pw-2@127.0.0.1/catalog"
PLAIN = [*SECRETS.values(), "Endpoint-Pw-1", "Catalog-Pw-2"]


def _create(service: PipelineService, name: str = "s", **sink: Any) -> dict[str, Any]:
    return service.create({"name": name, "schema": [{"name": "n", "type": "int64"}],
                           "sink": {"options": {**SECRETS, "endpoint_url": ENDPOINT}, **sink}})


def _stored_bytes(data_dir: Path) -> bytes:
    """Every byte the store holds on disk: the database file and its write-ahead log."""
    db = data_dir / "pipeline-do.sqlite"
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())


def _column(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "pipeline-do.sqlite") as con:
        return [r[0] for r in con.execute("SELECT definition FROM pipelines")]


def test_the_store_holds_no_secret_and_replies_show_none(service: PipelineService,
                                                         tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg")
    created = _create(service, table={"catalog_uri": CATALOG, "name": "t"})
    service.transform("s", {"sql": "SELECT n FROM events"})  # rewrites the stored definition
    raw = _stored_bytes(tmp_path)
    for text in PLAIN:
        assert text.encode() not in raw
        assert all(text not in column for column in _column(tmp_path))
        assert text not in json.dumps(created) and text not in json.dumps(service.get("s"))
    stored = json.loads(_column(tmp_path)[0])
    assert stored["sink"]["options"]["access_key_id"].startswith("enc.v1.")
    assert stored["sink"]["options"]["endpoint_url"].startswith("http://minio:enc.v1.")
    assert stored["sink"]["table"]["catalog_uri"].startswith("postgresql://cat:enc.v1.")
    assert service.get("s")["sink"]["table"]["catalog_uri"] == "postgresql://cat:***@127.0.0.1/catalog"

    # The data plane gets every value back exactly, after transform too.
    sealed_sink = service._definition("s")[0].sink
    opened = SecretBox.for_data_dir(str(tmp_path)).open_sink(sealed_sink)
    assert opened.options == {**SECRETS, "endpoint_url": ENDPOINT}
    assert opened.table == {"catalog_uri": CATALOG, "name": "t"}


def test_the_generated_key_is_private_made_once_and_reused(tmp_path: Path) -> None:
    box = SecretBox.for_data_dir(str(tmp_path))
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes()
    assert SecretBox.for_data_dir(str(tmp_path)).open(box.seal("x")) == "x"
    assert path.read_bytes() == key
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no scratch left behind


def test_a_given_key_wins_over_the_file_and_a_malformed_one_is_named(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    sealed = SecretBox.for_data_dir(str(tmp_path), key).seal("v")
    assert SecretBox(key).open(sealed) == "v"
    assert not (tmp_path / KEY_FILE).exists()
    for bad in ("not-a-key", key[:-4], "x" * 44):
        with pytest.raises(SecretKeyError) as caught:
            SecretBox(bad)
        assert "PIPELINE_DO_SECRET_KEY" in caught.value.message and bad not in caught.value.message


def test_plain_text_definitions_from_before_still_load_and_are_sealed_once(
        service: PipelineService, tmp_path: Path) -> None:
    pipeline_id = _create(service)["id"]
    _create(service, "plain-free", options={})
    with service.store.session() as s:  # as an older version stored it
        row = s.get(PipelineRow, pipeline_id)
        assert row is not None
        data = row.definition_dict()
        data["sink"]["options"] = {**SECRETS, "endpoint_url": ENDPOINT}
        row.definition = json.dumps(data)
    box = SecretBox.for_data_dir(str(tmp_path))
    assert box.open_sink(service._definition("s")[0].sink).options["secret_access_key"] == \
        SECRETS["secret_access_key"]
    assert seal_stored_definitions(service.store, box) == 1
    assert seal_stored_definitions(service.store, box) == 0
    assert all(text not in column for text in PLAIN for column in _column(tmp_path))
    assert box.open_sink(service._definition("s")[0].sink).options == \
        {**SECRETS, "endpoint_url": ENDPOINT}


def test_a_wrong_key_is_a_clear_epoch_error_naming_the_variable(service: PipelineService,
                                                                tmp_path: Path) -> None:
    pipeline_id = _create(service)["id"]
    _create(service, "no-secrets", options={})
    assert service.ingest_json_lines("s", b'{"n": 1}\n{"n": 2}\n')["accepted"] == 2
    buffer = EventBuffer(buffer_path(str(tmp_path), pipeline_id))
    assert plan_epoch(service.store, pipeline_id, buffer, flush=True) == 1
    buffer.close()
    key_file = tmp_path / KEY_FILE
    right = key_file.read_bytes()
    key_file.write_bytes(Fernet.generate_key())  # as if the key were lost or swapped
    other = SecretBox.for_data_dir(str(tmp_path))
    assert unreadable_pipelines(service.store, other) == ["s"]
    with pytest.raises(StorageError) as caught:
        run_epoch(service.store, str(tmp_path), pipeline_id, 1)
    assert "PIPELINE_DO_SECRET_KEY" in caught.value.message
    assert all(text not in caught.value.message for text in PLAIN)
    assert not os.path.exists(tmp_path / "lake" / "s")

    key_file.write_bytes(right)  # the right key back: the same epoch goes through
    assert run_epoch(service.store, str(tmp_path), pipeline_id, 1).rows_out == 2
    assert query(f"SELECT sum(n) FROM read_parquet('{tmp_path}/lake/s/*.parquet')") == [(3,)]
