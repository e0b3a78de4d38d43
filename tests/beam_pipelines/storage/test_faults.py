"""Storage faults: a store that is down or refuses fails epochs, nothing is lost or doubled.

The live test stops the GCS server (on-disk, so its objects survive) in the
middle of a stream, checks that nothing commits while it is down and that
ingest keeps buffering, restarts it on the same port and finds every event
exactly once. The in-process tests run epochs directly against S3.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from beam_pipelines.catalog.store import Epoch, EpochFile
from beam_pipelines.errors import StorageError
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.epochs import plan_epoch, run_epoch
from beam_pipelines.service import PipelineService
from beam_pipelines.storage import process, redaction
from tests import servers
from tests.conftest import ADMIN_KEY
from tests.live import LiveServer, query
from tests.stores import BUCKET, NO_STORAGE_ENV, Receiver, start_store, wait_for


class DiskGcsServer(servers.GcsServer):
    """The GCS server storing on disk: a restart on the same port keeps the objects."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def _command(self, port: int) -> list[str]:
        return [servers._bin("gcp-storage-emulator"), "--data-dir", str(self.root), "start",
                "--host", "127.0.0.1", "--port", str(port), "--quiet"]


def _events(first: int, count: int) -> bytes:
    return "\n".join(json.dumps({"n": i, "ts": f"2026-03-0{1 + i % 2}T00:00:00Z"})
                     for i in range(first, first + count)).encode()


SCHEMA = [{"name": "n", "type": "int64", "required": True},
          {"name": "ts", "type": "timestamp", "required": True}]


def test_gcs_down_mid_stream_then_back_loses_and_doubles_nothing(tmp_path: Path) -> None:
    gcs = start_store("gs", DiskGcsServer(tmp_path / "gcs-disk"))
    receiver = Receiver()
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    server = LiveServer(str(data_dir), api_key=ADMIN_KEY, extra_env={
        **NO_STORAGE_ENV, "PIPELINE_DO_STORAGE_RETRY_DEADLINE": "1",
        "PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE": "1", "PIPELINE_DO_WEBHOOK_RETRY_SECONDS": "0.2"})
    try:
        server.start()
        requests.post(f"{server.url}/webhooks", timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      json={"url": receiver.url, "events": ["pipeline.written", "pipeline.failed"]}
                      ).raise_for_status()
        pipeline_id = server.ok("create", {
            "name": "faults", "schema": SCHEMA, "event_time_field": "ts",
            "sink": {"uri": gcs.uri("faults"), "options": gcs.options,
                     "partition_by": "dt=%Y-%m-%d", "roll": {"interval_seconds": 0.3}}})["id"]
        server.ok("start", {"name": "faults"})

        def get() -> Any:
            return server.ok("get", {"name": "faults"})

        assert server.post_ndjson("faults", _events(0, 1000)).json()["data"]["accepted"] == 1000
        before = wait_for(lambda: (i := get())["backlog_events"] == 0 and i["epochs"] >= 1 and i,
                          message="the first events committed")

        gcs.server.stop()  # the store goes away mid-stream; ingest keeps buffering
        for first in (1000, 2000):
            assert server.post_ndjson("faults", _events(first, 1000)).json()["data"]["accepted"] \
                == 1000
        down = wait_for(lambda: (i := get())["errors"] >= 3 and i, timeout=60,
                        message="three failed epochs")
        assert (down["epochs"], down["files_written"]) == (before["epochs"], before["files_written"])
        assert down["backlog_events"] == 2000
        assert "failed" in down["last_error"] and "transient" in down["last_error"]
        failures = server.ok("logs", {"name": "faults", "level": "error"})["logs"]
        assert len(failures) >= 3 and all("retry in" in e["message"] for e in failures)
        # An outage is transient: it has PIPELINE_DO_EPOCH_MAX_TRANSIENT_ATTEMPTS (50 by
        # default) before the pipeline is failed, so it keeps running and heals by itself.
        assert get()["status"] == "running"
        assert not receiver.events("pipeline.failed", pipeline_id)
        time.sleep(1.0)
        assert get()["epochs"] == before["epochs"]  # still nothing committed

        gcs.server.start()  # same port, same disk: it recovers by itself
        assert server.post_ndjson("faults", _events(3000, 1000)).json()["data"]["accepted"] == 1000
        wait_for(lambda: get()["backlog_events"] == 0, timeout=90, message="recovery")
        server.ok("stop", {"name": "faults"}, options={"timeout": 60_000})
        info = get()

        objects = gcs.download("faults", str(tmp_path / "read"))
        parquet = {k: v for k, v in objects.items() if k.endswith(".parquet")}
        assert objects == parquet, sorted(objects)
        rows = query(f"SELECT n FROM read_parquet('{tmp_path}/read/*/*.parquet') ORDER BY n")
        assert rows == [(n,) for n in range(4000)]  # every event exactly once
        manifest = [f["path"] for f in info["files"]]
        assert len(manifest) == len(set(manifest)) == info["files_written"]
        assert {gcs.uri(f"faults/{k}"): v for k, v in parquet.items()} == \
            {f["path"]: f["bytes"] for f in info["files"]}
        written = wait_for(lambda: len(w := receiver.events("pipeline.written", pipeline_id))
                           == len(manifest) and w, timeout=30, message="pipeline.written")
        assert sorted(w["path"] for w in written) == sorted(manifest)  # each file announced once
        assert info["events_out"] == 4000 and info["errors"] >= 3
    finally:
        server.kill()
        receiver.close()
        gcs.server.stop()


# -- in process, against S3 ----------------------------------------------------

@pytest.fixture(scope="module")
def s3() -> Iterator[servers.S3Server]:
    with servers.S3Server() as server:
        yield server


@pytest.fixture(autouse=True, scope="module")
def _restore_process_state() -> Iterator[None]:
    yield
    process.reset_process_state()


def _plan(service: PipelineService, data_dir: Path, pipeline_id: str) -> int:
    buffer = EventBuffer(buffer_path(str(data_dir), pipeline_id))
    try:
        number = plan_epoch(service.store, pipeline_id, buffer, flush=True)
    finally:
        buffer.close()
    assert number is not None
    return number


def test_a_refusing_store_commits_nothing_until_it_accepts(
        service: PipelineService, s3: servers.S3Server, tmp_path: Path) -> None:
    bucket = "appears-later"
    pipeline_id = service.create({
        "name": "refused", "schema": SCHEMA, "event_time_field": "ts",
        "sink": {"uri": f"s3://{bucket}/p", "options": s3.sink_options(),
                 "partition_by": "dt=%Y-%m-%d"}})["id"]
    assert service.ingest_json_lines("refused", _events(0, 300))["accepted"] == 300
    epoch = _plan(service, tmp_path, pipeline_id)
    for _attempt in range(2):
        with pytest.raises(StorageError) as info:
            run_epoch(service.store, str(tmp_path), pipeline_id, epoch)
        assert info.value.transient is False  # NoSuchBucket: retrying alone will not help
        assert info.value.message.startswith(f"epoch {epoch} failed (sink s3://{bucket}/p")
    with service.store.session() as s:
        assert s.query(Epoch).filter_by(pipeline_id=pipeline_id).one().status == "planned"
        assert s.query(EpochFile).filter_by(pipeline_id=pipeline_id).count() == 0
    assert service.get("refused")["backlog_events"] == 300

    servers.create_s3_bucket(s3.endpoint_url, bucket)
    result = run_epoch(service.store, str(tmp_path), pipeline_id, epoch)
    assert result.rows_out == 300 and len(result.files) == 2
    client = servers.s3_client(s3.endpoint_url)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"p/dt=2026-03-0{d}/part-{epoch:010d}-00000-{pipeline_id}.parquet"
                    for d in (1, 2)]
    assert service.get("refused")["backlog_events"] == 0


def test_failure_messages_carry_no_secrets(service: PipelineService, tmp_path: Path) -> None:
    credentials = tmp_path / "key.json"
    credentials.write_text('{"type": "service_account", "private_key": "LEAKCHECK-PEM"}')
    dead = f"127.0.0.1:{servers.free_port()}"
    sinks = {
        "s3-dead": {"uri": "s3://b/p", "options": {
            "endpoint_url": f"http://user:LEAKCHECK-PW@{dead}", "region": "us-east-1",
            "access_key_id": "AKIALEAKCHECK0000001", "secret_access_key": "LEAKCHECK-SECRET"}},
        "gs-bad-key": {"uri": "gs://b/p", "options": {"credentials_file": str(credentials)}},
    }
    process.configure_retries(1.0)
    try:
        for name, sink in sinks.items():
            pipeline_id = service.create({"name": name, "sink": sink})["id"]
            service.ingest_json_lines(name, b'{"a": 1}')
            epoch = _plan(service, tmp_path, pipeline_id)
            with pytest.raises(StorageError) as info:
                run_epoch(service.store, str(tmp_path), pipeline_id, epoch)
            text = info.value.message + repr(info.value.details)
            assert "LEAKCHECK" not in text and str(credentials) not in text, text
            assert info.value.__cause__ is None and info.value.__suppress_context__
            assert text.startswith(f"epoch {epoch} failed (sink {sink['uri']}")
    finally:
        process.configure_retries(process.DEFAULT_RETRY_DEADLINE)


def test_redaction_of_what_storage_errors_quote() -> None:
    samples = {
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAABCDEFGHIJKLMNOP%2F1&"
        "X-Amz-Signature=deadbeef&x=1": "X-Amz-Signature=***",
        "GET https://storage.googleapis.com/b/o?X-Goog-Signature=abc&X-Goog-Credential=sa":
            "X-Goog-Signature=***",
        "http://user:hunter2@minio:9000/b": "http://***@minio:9000/b",
        "{'Authorization': 'AWS4-HMAC-SHA256 Credential=AKID/x, Signature=ff'}":
            "'Authorization': '***",
        '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----"}':
            '"private_key": "***"',
        "token AKIAABCDEFGHIJKLMNOP used": "token *** used",
    }
    for text, kept in samples.items():
        clean = redaction.redact_secrets(text)
        assert kept in clean, clean
        for secret in ("deadbeef", "hunter2", "AKIAABCDEFGHIJKLMNOP", "MIIE", "Signature=ff",
                       "X-Goog-Signature=abc"):
            assert secret not in clean, clean
    assert redaction.redact_secrets("key VERYSECRET here", {"secret_access_key": "VERYSECRET"}) \
        == "key *** here"
    assert BUCKET  # the shared bucket name stays a plain word


def test_log_records_of_the_worker_are_redacted() -> None:
    import io
    import logging

    process.protect_secrets(["LEAKCHECK-LOGGED"])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    try:
        try:
            raise ConnectionError('PUT "http://u:LEAKCHECK-PW@h:1/b?X-Amz-Signature=LEAKCHECK"')
        except ConnectionError:
            logger.exception("upload of %s failed", "LEAKCHECK-LOGGED")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "upload of *** failed" in text and "ConnectionError" in text
    assert "LEAKCHECK" not in text, text
