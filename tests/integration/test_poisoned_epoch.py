"""A poisoned epoch and a sink outage through the real server (``PIPELINE_DO_EPOCH_MAX_ATTEMPTS=2``).

* SQL that fails on one value: the pipeline goes ``failed`` after two
  attempts, ``pipeline.failed`` reaches a real webhook receiver once, and
  ``transform`` + ``resume`` write every accepted event exactly once.
* An S3 sink that is down: a ``stop`` that times out leaves ``stopping``;
  ``resume`` goes back to ``running``; once the store is up, a ``stop``
  flushes everything, once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from tests import servers
from tests.conftest import ADMIN_KEY
from tests.live import LiveServer, query, wait_for
from tests.stores import BUCKET, NO_STORAGE_ENV, Receiver

SCHEMA = [{"name": "i", "type": "int64", "required": True}, {"name": "s", "type": "string"}]


def _events(values: list[str], first: int = 0) -> bytes:
    return "\n".join(json.dumps({"i": first + k, "s": v}) for k, v in enumerate(values)).encode()


def test_a_poisoned_epoch_fails_once_and_resumes_after_a_transform_with_nothing_lost(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    receiver = Receiver()
    server = LiveServer(str(data_dir), api_key=ADMIN_KEY, extra_env={
        "PIPELINE_DO_EPOCH_MAX_ATTEMPTS": "2", "PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE": "1",
        "PIPELINE_DO_WEBHOOK_RETRY_SECONDS": "0.2"})
    try:
        server.start()
        requests.post(f"{server.url}/webhooks", timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      json={"url": receiver.url, "events": ["pipeline.failed",
                                                            "pipeline.resumed"]}
                      ).raise_for_status()
        pipeline_id = server.ok("create", {
            "name": "poisoned", "schema": SCHEMA,
            "sql": "SELECT i, CAST(s AS INTEGER) AS n FROM events",
            "sink": {"roll": {"interval_seconds": 0.2}}})["id"]
        values = [str(n) for n in range(11)] + ["not a number"]
        assert server.post_ndjson("poisoned", _events(values)).json()["data"]["accepted"] == 12
        server.ok("start", {"name": "poisoned"})

        announced = wait_for(lambda: receiver.events("pipeline.failed", pipeline_id),
                             timeout=90, message="pipeline.failed")
        info = server.ok("get", {"name": "poisoned"})
        assert info["status"] == "failed" and info["epochs"] == 0
        assert info["backlog_events"] == 12 and info["errors"] == 2
        assert info["last_error"].startswith("epoch 1 failed: SQL_ERROR: Conversion Error")
        assert announced[0]["epoch"] == 1 and announced[0]["attempts"] == 2
        assert announced[0]["error"] == info["last_error"]
        logs = server.ok("logs", {"name": "poisoned", "level": "error"})["logs"]
        monitor = server.ok("monitor", {"name": "poisoned"})
        shown = json.dumps([info["last_error"], logs, monitor["last_error"], announced])
        assert str(data_dir) not in shown and "Traceback" not in shown
        assert "ConversionException" not in shown  # class names stay in the server log
        lake = data_dir / "lake" / "poisoned"
        assert not (lake / "_tmp").exists() or not list((lake / "_tmp").rglob("*"))
        assert server.call("pause", {"name": "poisoned"}).status_code == 409

        server.ok("transform", {"name": "poisoned",
                                "sql": "SELECT i, TRY_CAST(s AS INTEGER) AS n FROM events"})
        assert server.ok("resume", {"name": "poisoned"})["status"] == "running"
        stopped = server.ok("stop", {"name": "poisoned"}, options={"timeout": 60_000})
        assert stopped["status"] == "stopped"
        info = server.ok("get", {"name": "poisoned"})
        assert (info["events_out"], info["backlog_events"], info["epochs"]) == (12, 0, 1)
        rows = query(f"SELECT i, n FROM read_parquet('{lake}/**/*.parquet') ORDER BY i")
        assert rows == [(i, i) for i in range(11)] + [(11, None)]  # each event once
        assert not (lake / "_tmp").exists()
        wait_for(lambda: receiver.events("pipeline.resumed", pipeline_id), timeout=30,
                 message="pipeline.resumed")
        assert len(receiver.events("pipeline.failed", pipeline_id)) == 1
    finally:
        server.kill()
        receiver.close()


def test_a_stop_during_a_sink_outage_times_out_into_stopping_and_resumes(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    s3 = servers.S3Server(port=servers.free_port())  # not started yet: the sink is down
    server = LiveServer(str(data_dir), api_key=ADMIN_KEY, extra_env={
        **NO_STORAGE_ENV, "PIPELINE_DO_EPOCH_MAX_ATTEMPTS": "2",
        "PIPELINE_DO_STORAGE_RETRY_DEADLINE": "1"})
    try:
        server.start()
        server.ok("create", {"name": "outage", "schema": SCHEMA, "sink": {
            "uri": f"s3://{BUCKET}/outage", "options": s3.sink_options(),
            "roll": {"interval_seconds": 0.2}}})
        server.ok("start", {"name": "outage"})
        assert server.post_ndjson("outage", _events(["a"] * 100)).json()["data"]["accepted"] \
            == 100
        wait_for(lambda: server.ok("get", {"name": "outage"})["errors"] >= 2, timeout=180,
                 message="two failed attempts")

        for _ in range(2):  # a stop that times out, and the same stop waited for again
            err = server.call("stop", {"name": "outage"}, options={"timeout": 500}).json()
            assert err["error"]["code"] == "TIMEOUT" and err["error"]["details"] == {
                "status": "stopping"}, err
        info = server.ok("get", {"name": "outage"})
        assert info["status"] == "stopping"  # an outage is transient: 20 attempts before failed
        assert "SINK_UNAVAILABLE" in info["last_error"] and str(data_dir) not in info["last_error"]
        assert server.ok("resume", {"name": "outage"})["status"] == "running"

        s3.start()
        servers.create_s3_bucket(s3.endpoint_url, BUCKET)
        assert server.post_ndjson("outage", _events(["b"] * 50, 100)).json()["data"]["accepted"] \
            == 50
        stopped = server.ok("stop", {"name": "outage"}, options={"timeout": 120_000})
        assert stopped["status"] == "stopped"
        client = servers.s3_client(s3.endpoint_url)
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]]
        assert keys and all(k.startswith("outage/part-") for k in keys), keys  # no _tmp/ left
        read = tmp_path / "read"
        read.mkdir()
        for k in keys:
            client.download_file(BUCKET, k, str(read / k.replace("/", "_")))
        rows: Any = query(f"SELECT i, s FROM read_parquet('{read}/*.parquet') ORDER BY i")
        assert rows == [(i, "a") for i in range(100)] + [(i, "b") for i in range(100, 150)]
    finally:
        server.kill()
        s3.stop()
