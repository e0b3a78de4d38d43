"""Delivery to gs:// and s3:// through the real server and the local storage servers.

One ``pipeline-do serve`` for the module, started with no storage endpoint or
keys in its environment: every sink names its endpoint (and keys) in
``sink.options``. What the sinks wrote is read back through the native
clients (google-cloud-storage, boto3) and DuckDB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests

from tests.conftest import ADMIN_KEY
from tests.integration.test_end_to_end import SCHEMA, SQL, check_orders, send_orders
from tests.live import LiveServer, query
from tests.servers import free_port
from tests.stores import NO_STORAGE_ENV, Receiver, Store, start_store, wait_for

START = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def stores() -> Iterator[dict[str, Store]]:
    started = {scheme: start_store(scheme) for scheme in ("gs", "s3")}
    try:
        yield started
    finally:
        for store in started.values():
            store.server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("object-stores")
    live = LiveServer(str(data_dir), api_key=ADMIN_KEY,
                      extra_env={**NO_STORAGE_ENV, "PIPELINE_DO_STORAGE_RETRY_DEADLINE": "2",
                                 # a dead endpoint fails its pipeline after 2 attempts
                                 "PIPELINE_DO_EPOCH_MAX_TRANSIENT_ATTEMPTS": "2",
                                 "PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE": "1",
                                 "PIPELINE_DO_WEBHOOK_RETRY_SECONDS": "0.2"})
    live.start()
    try:
        yield live
    finally:
        live.kill()


def _duck(files_glob: str) -> Any:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW out AS SELECT * FROM read_parquet('{files_glob}', "
                "hive_partitioning = true)")
    return con


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_end_to_end_on_object_storage(scheme: str, stores: dict[str, Store], server: LiveServer,
                                      tmp_path: Path) -> None:
    """The core end-to-end test, on a bucket: 100,000 events, bad records mixed in."""
    store = stores[scheme]
    name = f"orders-{scheme}"
    prefix = f"e2e/{name}"
    created = server.ok("create", {
        "name": name, "schema": SCHEMA, "event_time_field": "ts", "sql": SQL,
        "sink": {"uri": store.uri(prefix), "options": store.options,
                 "partition_by": "dt=%Y-%m-%d", "roll": {"interval_seconds": 1}}})
    assert created["sink"]["options"].get("endpoint_url") == store.server.endpoint_url
    assert "secret_access_key" not in created["sink"]["options"]
    server.ok("start", {"name": name})

    accepted, rejected = send_orders(server, name)

    stopped = server.ok("stop", {"name": name}, options={"timeout": 120_000})
    assert stopped["status"] == "stopped"
    objects = store.download(prefix, str(tmp_path), suffix=".parquet")
    written = check_orders(_duck(f"{tmp_path}/**/*.parquet"), accepted)

    # The manifest names exactly the objects in the bucket, with their sizes.
    info = server.ok("get", {"name": name})
    manifest = {f["path"]: f["bytes"] for f in info["files"]}
    assert len(manifest) == len(info["files"]) == info["files_written"] <= 100
    assert manifest == {store.uri(f"{prefix}/{key}"): size for key, size in objects.items()}
    assert {f["path"] for f in stopped["files"]} <= set(manifest)
    assert info["events_in"] == 100_000 and info["events_rejected"] == len(rejected) == 80
    assert info["events_out"] == written and info["backlog_events"] == 0
    assert info["errors"] == 0


FORMATS = [("parquet", c) for c in ("zstd", "snappy", "gzip", "lz4", "none")] + \
    [("jsonl", "gzip"), ("jsonl", "none"), ("csv", "gzip"), ("csv", "none")]
NOTES = ["plain", 'a "quoted", comma', "two\nlines", "", "ünïcødé"]


def _format_events(count: int) -> list[dict[str, Any]]:
    return [{"user_id": i, "country": ["de", "fr"][i % 2], "amount": i / 4,
             "note": NOTES[i % len(NOTES)],
             "ts": (START + timedelta(hours=i % 48, microseconds=i)).isoformat()}
            for i in range(count)]


def _reader(path: str, format_name: str) -> str:
    return {"parquet": f"read_parquet('{path}')",
            "jsonl": f"read_json('{path}', format='newline_delimited')",
            "csv": f"read_csv('{path}', header=true, allow_quoted_nulls=false)"}[format_name]


def test_every_format_and_compression_reads_back_from_both_stores(
        stores: dict[str, Store], server: LiveServer, tmp_path: Path) -> None:
    schema = [{"name": "user_id", "type": "int64", "required": True},
              {"name": "country", "type": "string"}, {"name": "amount", "type": "float64"},
              {"name": "note", "type": "string"}, {"name": "ts", "type": "timestamp"}]
    events = _format_events(1_500)
    body = "\n".join(json.dumps(e) for e in events).encode()
    cases = [(scheme, f, c) for scheme in ("gs", "s3") for f, c in FORMATS]
    for scheme, format_name, compression in cases:  # all run side by side on the server
        name = f"fmt-{scheme}-{format_name}-{compression}"
        server.ok("create", {"name": name, "schema": schema, "event_time_field": "ts",
                             "sink": {"uri": stores[scheme].uri(f"formats/{name}"),
                                      "options": stores[scheme].options, "format": format_name,
                                      "compression": compression, "partition_by": "dt=%Y-%m-%d",
                                      "roll": {"interval_seconds": 0.2}}})
        server.ok("start", {"name": name})
        assert server.post_ndjson(name, body).json()["data"]["accepted"] == len(events)

    start_us = int(START.timestamp()) * 1_000_000
    want = sorted((e["user_id"], e["note"], e["amount"],
                   start_us + (e["user_id"] % 48) * 3_600_000_000 + e["user_id"]) for e in events)
    for scheme, format_name, compression in cases:
        name = f"fmt-{scheme}-{format_name}-{compression}"
        server.ok("stop", {"name": name}, options={"timeout": 120_000})
        info = server.ok("get", {"name": name})
        manifest, pipeline_id = info["files"], info["id"]
        store = stores[scheme]
        target = tmp_path / name
        objects = store.download(f"formats/{name}", str(target))
        extension = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}[format_name]
        extension += ".gz" if compression == "gzip" and format_name != "parquet" else ""
        assert sorted(objects) == [f"dt=2026-03-01/part-0000000001-00000-{pipeline_id}{extension}",
                                   f"dt=2026-03-02/part-0000000001-00000-{pipeline_id}{extension}"
                                   ], objects
        assert {f["path"]: f["bytes"] for f in manifest} == \
            {store.uri(f"formats/{name}/{k}"): v for k, v in objects.items()}
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        rows = con.sql(
            "SELECT user_id, note, amount, epoch_us(CAST(ts AS TIMESTAMPTZ)) "
            f"FROM {_reader(f'{target}/*/*{extension}', format_name)}"
        ).fetchall()
        assert sorted(rows) == want, name


def test_hostile_partition_values_stay_inside_the_prefix(stores: dict[str, Store],
                                                         server: LiveServer,
                                                         tmp_path: Path) -> None:
    hostile = ["../../etc", "..", ".", "a/b", "", None, "x=y", "%2F..%2F", "de"]
    schema = [{"name": "n", "type": "int64", "required": True},
              {"name": "country", "type": "string"}, {"name": "ts", "type": "timestamp"}]
    events = [{"n": i, "country": hostile[i % len(hostile)], "ts": "2026-03-01T10:00:00Z"}
              for i in range(900)]
    lake = Path(server.data_dir) / "lake"
    sinks = {"s3": {"uri": stores["s3"].uri("hostile/p"), "options": stores["s3"].options},
             "file": {}}  # file: the default <data dir>/lake/<name>
    for kind, sink in sinks.items():
        name = f"hostile-{kind}"
        server.ok("create", {"name": name, "schema": schema, "event_time_field": "ts",
                             "sink": {**sink, "partition_by": "country={country}/dt=%Y-%m-%d"}})
        server.ok("start", {"name": name})
        assert server.post_ndjson(name, "\n".join(json.dumps(e) for e in events).encode()
                                  ).json()["data"]["accepted"] == 900
        server.ok("stop", {"name": name}, options={"timeout": 60_000})

    expected_dirs = {"country=..%2F..%2Fetc", "country=%2E%2E", "country=%2E", "country=a%2Fb",
                     "country=__null__", "country=x%3Dy", "country=%252F..%252F", "country=de"}
    objects = stores["s3"].download("hostile/p", str(tmp_path / "s3"))
    local = {str(p.relative_to(lake / "hostile-file")): p.stat().st_size
             for p in (lake / "hostile-file").rglob("*") if p.is_file()}
    for found in (objects, local):
        assert {key.split("/")[0] for key in found} == expected_dirs
        assert all(len(key.split("/")) == 3 and key.split("/")[1] == "dt=2026-03-01"
                   for key in found), sorted(found)
    # Nothing landed anywhere else under the data dir.
    outside = [p for p in Path(server.data_dir).rglob("*.parquet")
               if not p.is_relative_to(lake / "hostile-file")
               and not p.is_relative_to(lake / "orders")]
    assert outside == []
    assert not (lake / "etc").exists() and not (Path(server.data_dir).parent / "etc").exists()
    for root in (tmp_path / "s3", lake / "hostile-file"):
        rows = query(f"SELECT n, country FROM read_parquet('{root}/*/*/*.parquet', "
                     "hive_partitioning = false) ORDER BY n")
        assert rows == [(e["n"], e["country"]) for e in events]


def test_max_events_rolls_epochs_and_the_manifest_describes_each_file(
        stores: dict[str, Store], server: LiveServer, tmp_path: Path) -> None:
    store = stores["gs"]
    schema = [{"name": "n", "type": "int64", "required": True},
              {"name": "ts", "type": "timestamp", "required": True}]
    pipeline_id = server.ok("create", {
        "name": "rolled", "schema": schema, "event_time_field": "ts",
        "sink": {"uri": store.uri("rolled"), "options": store.options,
                 "roll": {"max_events": 1000, "interval_seconds": 3600}}})["id"]
    server.ok("start", {"name": "rolled"})
    for request in range(5):  # an epoch takes whole requests up to max_events
        body = "\n".join(json.dumps({"n": i, "ts": (START + timedelta(minutes=i)).isoformat()})
                         for i in range(request * 1000, request * 1000 + 1000)).encode()
        assert server.post_ndjson("rolled", body).json()["data"]["accepted"] == 1000
    # max_events alone starts epochs: wait for all five without a stop.
    info = wait_for(lambda: (i := server.ok("get", {"name": "rolled"}))["epochs"] >= 5 and i,
                    timeout=90, message="five epochs")
    assert info["epochs"] == 5 and info["backlog_events"] == 0
    objects = store.download("rolled", str(tmp_path))
    assert sorted(objects) == [f"part-{n:010d}-00000-{pipeline_id}.parquet" for n in range(1, 6)]
    files = info["files"]
    assert [(f["epoch"], f["rows"]) for f in files] == [(n, 1000) for n in range(1, 6)]
    for f in files:
        key = f["path"].removeprefix(store.uri("rolled") + "/")
        assert f["bytes"] == objects[key]
        [(low, high, count)] = query(
            f"SELECT min(n), max(n), count(*) FROM read_parquet('{tmp_path}/{key}')")
        assert count == f["rows"]
        assert (f["min_event_time"], f["max_event_time"]) == (_iso(low), _iso(high))
    server.ok("stop", {"name": "rolled"})


def _iso(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


KEY_ID = "AKIAPDOLEAKCHECK0001"
SECRET_KEY = "pdoLeakCheckSecret/0123+abc"
PASSWORD = "pdoLeakCheckPassword"
PRIVATE_KEY = "pdoLeakCheckPrivateKeyMaterial"


def test_secrets_never_leave_the_server(server: LiveServer, tmp_path: Path) -> None:
    """Keys, URL passwords and credential files are write-only, even in failures."""
    secrets = (KEY_ID, SECRET_KEY, PASSWORD, PRIVATE_KEY)
    receiver = Receiver()
    auth = {"Authorization": f"Bearer {server.api_key}"}
    hook = requests.post(f"{server.url}/webhooks", headers=auth, timeout=30, json={
        "url": receiver.url, "events": ["pipeline.created", "pipeline.started",
                                        "pipeline.failed"], "secret": "hook-secret"}).json()["data"]
    credentials = tmp_path / "service-account.json"
    credentials.write_text(json.dumps({"type": "service_account", "project_id": "p",
                                       "private_key_id": "1", "client_email": "x@p.iam",
                                       "private_key": PRIVATE_KEY}))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every epoch fails
    sinks = {
        "leaky-s3": {"uri": "s3://pdo-lake/leaky", "options": {
            "endpoint_url": f"http://pdo:{PASSWORD}@{dead}", "region": "us-east-1",
            "access_key_id": KEY_ID, "secret_access_key": SECRET_KEY}},
        "leaky-gs": {"uri": "gs://pdo-lake/leaky", "options": {
            "endpoint_url": f"http://{dead}", "credentials_file": str(credentials)}},
    }
    replies: list[Any] = []
    try:
        for name, sink in sinks.items():
            replies.append(server.ok("create", {"name": name, "sink": {
                **sink, "roll": {"interval_seconds": 0.2}}}))
            assert replies[-1]["sink"]["options"].get("endpoint_url", "").count(PASSWORD) == 0
            replies.append(server.ok("start", {"name": name}))
            assert server.post_ndjson(name, b'{"a": 1}\n{"a": 2}').json()["data"]["accepted"] == 2
        for name in sinks:
            def failed_twice(name: str = name) -> Any:
                info = server.ok("get", {"name": name})
                return info["errors"] >= 2 and info
            info = wait_for(failed_twice, timeout=180, message=f"{name} to fail twice")
            assert info["epochs"] == 0 and info["backlog_events"] == 2
            assert info["last_error"].startswith("epoch 1 failed"), info["last_error"]
            logs = server.ok("logs", {"name": name, "level": "error"})["logs"]
            assert len(logs) >= 2 and all("epoch 1 failed" in e["message"] for e in logs)
            replies += [info, logs, server.ok("monitor", {"name": name})]
            def announced(pipeline_id: str = info["id"]) -> Any:
                return receiver.events("pipeline.failed", pipeline_id)
            wait_for(announced, timeout=30, message=f"pipeline.failed for {name}")
        replies.append(server.ok("list"))
        text = json.dumps(replies) + receiver.raw().decode()
        text += "".join(p.read_text(errors="replace")
                        for p in Path(server.data_dir).glob("server-*.log"))
        leaked = [s for s in secrets if s in text]
        assert not leaked, leaked
        assert str(credentials) not in json.dumps(replies)
    finally:
        for name in sinks:
            server.call("delete", {"name": name})
        requests.delete(f"{server.url}/webhooks/{hook['id']}", headers=auth, timeout=30)
        receiver.close()


def test_the_environment_supplies_endpoint_and_keys(stores: dict[str, Store],
                                                    tmp_path: Path) -> None:
    """STORAGE_EMULATOR_HOST and AWS_* in the server's environment, no sink options."""
    env = {**NO_STORAGE_ENV, "STORAGE_EMULATOR_HOST": stores["gs"].server.endpoint_url,
           "AWS_ENDPOINT_URL": stores["s3"].server.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    data_dir = tmp_path / "env-server"
    data_dir.mkdir()
    live = LiveServer(str(data_dir), api_key=ADMIN_KEY, extra_env=env).start()
    try:
        body = "\n".join(json.dumps({"n": i}) for i in range(500)).encode()
        ids: dict[str, str] = {}
        for scheme in ("gs", "s3"):
            name = f"from-env-{scheme}"
            ids[scheme] = live.ok("create", {"name": name, "sink": {
                "uri": stores[scheme].uri(name), "format": "jsonl"}})["id"]
            live.ok("start", {"name": name})
            assert live.post_ndjson(name, body).json()["data"]["accepted"] == 500
        for scheme in ("gs", "s3"):
            name = f"from-env-{scheme}"
            live.ok("stop", {"name": name}, options={"timeout": 60_000})
            target = tmp_path / name
            objects = stores[scheme].download(name, str(target))
            assert list(objects) == [f"part-0000000001-00000-{ids[scheme]}.jsonl.gz"]
            rows = query(f"SELECT json_extract(value, '$.n')::INT AS n FROM read_json("
                         f"'{target}/*.jsonl.gz', format='newline_delimited') ORDER BY n")
            assert rows == [(i,) for i in range(500)]
    finally:
        live.kill()


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_an_iceberg_table_on_object_storage(scheme: str, stores: dict[str, Store],
                                            server: LiveServer, tmp_path: Path) -> None:
    """The worker writes table metadata to the bucket with the sink's own options.

    Read back with pyiceberg: on s3 through its own S3 FileIO; on gs (pyiceberg
    reaches GCS only through gcsfs, not installed here) through the sink's
    FileIO for the metadata, and the data files through google-cloud-storage.
    """
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog.sql import SqlCatalog

    from beam_pipelines.storage.iceberg import CATALOG_NAME, EPOCH_PROPERTY, default_catalog_uri

    store = stores[scheme]
    name = f"iceberg-{scheme}"
    schema = [{"name": "n", "type": "int64", "required": True},
              {"name": "ts", "type": "timestamp", "required": True}]
    server.ok("create", {"name": name, "schema": schema, "event_time_field": "ts",
                         "sink": {"uri": store.uri(f"iceberg/{name}"), "options": store.options,
                                  "partition_by": "dt=%Y-%m-%d",
                                  "roll": {"max_events": 500, "interval_seconds": 3600},
                                  "table": {"namespace": "lake", "name": name}}})
    server.ok("start", {"name": name})
    for request in range(3):
        body = "\n".join(json.dumps({"n": i, "ts": (START + timedelta(hours=i % 30)).isoformat()})
                         for i in range(request * 500, request * 500 + 500)).encode()
        assert server.post_ndjson(name, body).json()["data"]["accepted"] == 500
    info = wait_for(lambda: (i := server.ok("get", {"name": name}))["epochs"] >= 3 and i,
                    timeout=90, message="three epochs")
    assert info["errors"] == 0, info["last_error"]

    if scheme == "s3":
        s3 = store.server
        io = {"s3.endpoint": s3.endpoint_url, "s3.region": s3.region,
              "s3.access-key-id": s3.access_key_id, "s3.secret-access-key": s3.secret_access_key}
    else:
        io = {"py-io-impl": "beam_pipelines.storage.iceberg.BeamFileIO",
              "pipeline-do.sink-options": json.dumps(store.options)}
    catalog = SqlCatalog(CATALOG_NAME, uri=default_catalog_uri(server.data_dir), **io)
    table = catalog.load_table(("lake", name))
    assert table.location() == store.uri(f"iceberg/{name}")
    assert [s.summary[EPOCH_PROPERTY] if s.summary else None
            for s in table.metadata.snapshots] == ["1", "2", "3"]
    data_files = {task.file.file_path for task in table.scan().plan_files()}
    assert data_files == {f["path"] for f in info["files"]}
    if scheme == "s3":
        assert sorted(table.scan().to_arrow().column("n").to_pylist()) == list(range(1500))
    else:
        objects = store.download(f"iceberg/{name}", str(tmp_path), suffix=".parquet")
        assert {store.uri(f"iceberg/{name}/{key}") for key in objects} == data_files
        rows = query(f"SELECT n FROM read_parquet('{tmp_path}/**/*.parquet') ORDER BY n")
        assert rows == [(i,) for i in range(1500)]
    assert any(key.startswith("metadata/") for key in store.objects(f"iceberg/{name}"))
    server.ok("stop", {"name": name})


def test_an_s3_sink_with_keys_delivers_and_the_store_holds_them_sealed(
        stores: dict[str, Store], server: LiveServer, tmp_path: Path) -> None:
    """moto takes any keys: distinctive ones show they never reach the store's file."""
    store = stores["s3"]
    keys = {"access_key_id": "AKIASEALEDMOTO00042", "secret_access_key": "Moto-Secret-Sealed-42"}
    name = "sealed-s3"
    pipeline_id = server.ok("create", {"name": name, "schema": [{"name": "n", "type": "int64"}],
                                       "sink": {"uri": store.uri(name),
                                                "options": {**store.options, **keys}}})["id"]
    server.ok("start", {"name": name})
    body = "\n".join(json.dumps({"n": i}) for i in range(300)).encode()
    assert server.post_ndjson(name, body).json()["data"]["accepted"] == 300
    server.ok("stop", {"name": name}, options={"timeout": 60_000})
    objects = store.download(name, str(tmp_path))
    assert list(objects) == [f"part-0000000001-00000-{pipeline_id}.parquet"]
    assert query(f"SELECT count(*), sum(n) FROM read_parquet('{tmp_path}/*.parquet')") == \
        [(300, sum(range(300)))]
    db = Path(server.data_dir, "pipeline-do.sqlite")
    raw = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    assert all(value.encode() not in raw for value in keys.values())
