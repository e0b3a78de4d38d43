"""A ``runner: dataflow`` pipeline end to end: HTTP in, Pub/Sub between, windowed Parquet out.

Every part runs here for real but Dataflow's control plane: the API on a real
HTTP server (werkzeug on loopback), the real ``DataflowEngine`` launching its
Flex Template against the recording v1b3 server (``tests.fakes``), the real
Pub/Sub emulator carrying each accepted batch, and the GCS server holding the
staged job spec and the lake. The job Dataflow would run is the one the
engine wrote to the staging bucket: read back and run on Beam's streaming
DirectRunner (which refuses Pub/Sub's ``id_label``: its ``Dedupe`` stage alone
drops the re-published batch). Files are read back with DuckDB.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from beam_pipelines.settings import data_plane_settings
from beam_pipelines.storage import process
from tests import servers
from tests.conftest import ADMIN_KEY
from tests.fakes.dataflow_server import DataflowServer
from tests.live import wait_for
from tests.stores import Store, running_store
from transforms.batches import EVENT_TIME_MS, encode_batch

pytestmark = [
    pytest.mark.pubsub, pytest.mark.dataflow, pytest.mark.slow,
    pytest.mark.skipif(not servers.PubSubEmulator.available(),
                       reason="the Pub/Sub emulator is not installed (Debian package "
                              f"google-cloud-cli-pubsub-emulator: {servers.PUBSUB_EMULATOR})"),
]

PROJECT, REGION = "test-project", "us-central1"
WINDOW_SECONDS = 2.0
RUN_SECONDS = 90.0  # the bound on reading the job's output back
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
SQL = "SELECT user_name, n * 10 AS tens, _event_time FROM events WHERE n <> 13"


@pytest.fixture(scope="module")
def gcs() -> Iterator[Store]:
    with running_store("gs") as store:
        yield store


@pytest.fixture
def dataflow() -> Iterator[DataflowServer]:
    with DataflowServer() as server:
        yield server


@pytest.fixture
def api(tmp_path: Path, pubsub_emulator: servers.PubSubEmulator, gcs: Store, dataflow: DataflowServer,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API on a real loopback HTTP server, its Dataflow engine pointed at the fakes."""
    from werkzeug.serving import make_server

    from control_api import create_app

    bucket = gcs.uri("dataflow")
    for name, value in {
            "PUBSUB_EMULATOR_HOST": pubsub_emulator.host_port,
            "PIPELINE_DO_DATAFLOW_PROJECT": PROJECT, "PIPELINE_DO_DATAFLOW_REGION": REGION,
            "PIPELINE_DO_DATAFLOW_TEMP_LOCATION": f"{bucket}/temp",
            "PIPELINE_DO_DATAFLOW_STAGING_LOCATION": f"{bucket}/staging",
            "PIPELINE_DO_DATAFLOW_SDK_CONTAINER_IMAGE": "example.invalid/pipeline-do:test",
            "PIPELINE_DO_DATAFLOW_FLEX_TEMPLATE": f"{bucket}/templates/pipeline-do.json",
            "PIPELINE_DO_DATAFLOW_ENDPOINT": dataflow.endpoint}.items():
        monkeypatch.setenv(name, value)
    data_plane_settings.cache_clear()  # read once per process: read this test's
    # The staging bucket is read through Beam's gs:// filesystem: this server, anonymous.
    process.apply_sink_environment(bucket, gcs.options)
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "API_KEY": ADMIN_KEY,
                      "RATE_LIMIT": 0, "TESTING": True})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        data_plane_settings.cache_clear()


def _call(api: str, operation: str, **params: Any) -> Any:
    reply = requests.post(f"{api}/pipeline", json={"operation": operation, "parameters": params},
                          headers=AUTH, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def _windows_ahead(count: int) -> list[datetime]:
    first = (int(time.time() // WINDOW_SECONDS) + 2) * WINDOW_SECONDS
    return [datetime.fromtimestamp(first + i * WINDOW_SECONDS, timezone.utc) for i in range(count)]


def _read_lake(gcs: Store, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    """``{file: rows}`` of every final Parquet file (footer checked first), rows sorted."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with tempfile.TemporaryDirectory() as local, duckdb.connect() as con:
        gcs.download(prefix, local, suffix=".parquet")
        for path in sorted(Path(local).rglob("*.parquet")):
            relative = path.relative_to(local).as_posix()
            if relative.startswith("_tmp/"):
                continue
            pq.ParquetFile(path).close()  # a file without its footer fails here, by name
            found[relative] = con.execute(
                "SELECT user_name, tens, epoch_ms(_event_time) FROM read_parquet(?) "
                "ORDER BY tens", [str(path)]).fetchall()
    return found


def _per_window(files: dict[str, list[tuple[Any, ...]]]) -> dict[tuple[str, str], list[Any]]:
    """Rows by (partition, window start), whichever pane wrote them."""
    merged: dict[tuple[str, str], list[Any]] = {}
    for name, rows in files.items():
        partition, file_name = name.rsplit("/", 1)
        window = file_name.split("-")[1]  # part-w<start>-p<pane>-<shard>-<id>.parquet
        merged.setdefault((partition, window), []).extend(rows)
    return {key: sorted(rows) for key, rows in merged.items()}


def _expected(events: list[dict[str, Any]]) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = {}
    for e in events:
        if e["n"] == 13:
            continue
        t = datetime.fromisoformat(e["ts"])
        start = datetime.fromtimestamp(t.timestamp() // WINDOW_SECONDS * WINDOW_SECONDS,
                                       timezone.utc)
        key = (f"u={e['user_name']}", f"w{start:%Y%m%dT%H%M%S}Z")
        out.setdefault(key, []).append((e["user_name"], e["n"] * 10,
                                        int(t.timestamp() * 1000)))
    return {key: sorted(rows) for key, rows in out.items()}


def _tick(publisher: Any, topic: str) -> None:
    """An empty batch: ends the DirectRunner's pull wait so its watermark moves on."""
    empty = encode_batch(pa.table({"n": pa.array([], pa.int64())}))
    publisher.publish(topic, empty, batch_id=f"tick-{time.monotonic_ns()}",
                      **{EVENT_TIME_MS: str(int(time.time() * 1000))}).result(timeout=30)


def test_events_ingested_over_http_land_per_window_exactly_once(
        api: str, gcs: Store, dataflow: DataflowServer) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from beam_pipelines.runners.dataflow_job import build_job_graph, read_spec

    sink = gcs.uri("lake/clicks")
    created = _call(api, "create", name="clicks", sql=SQL, event_time_field="ts",
                    schema=[{"name": "user_name", "type": "string", "required": True},
                            {"name": "n", "type": "int64", "required": True},
                            {"name": "ts", "type": "timestamp", "required": True}],
                    sink={"uri": sink, "options": gcs.options, "partition_by": "u={user_name}",
                          "roll": {"interval_seconds": WINDOW_SECONDS}},
                    runner={"type": "dataflow", "options": {"allowed_lateness_seconds": 60}})
    pipeline_id = created["id"]
    assert _call(api, "start", name="clicks")["status"] == "running"

    # The engine launched its Flex Template on a job spec it wrote to the staging bucket.
    [launch] = dataflow.calls("POST", "flexTemplates:launch")
    assert launch.launch is not None
    spec_uri = launch.launch["launchParameter"]["parameters"]["job_spec"]
    job = read_spec(spec_uri)
    assert (job.pipeline_id, job.sql) == (pipeline_id, SQL)
    topic = f"projects/{PROJECT}/topics/{job.subscription.rsplit('/', 1)[1]}"

    # A tap on the pipeline's topic: one accepted batch is published again from it.
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    tap = subscriber.subscription_path(PROJECT, f"tap-{pipeline_id}")
    subscriber.create_subscription(name=tap, topic=topic)

    options = process.beam_options_for_sink(sink, gcs.options)
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    build_job_graph(pipeline, job, id_label=None)
    result = pipeline.run()  # the streaming job runs in background threads until cancelled
    try:
        w = _windows_ahead(3)
        batches: list[list[dict[str, Any]]] = [
            [{"user_name": "ana", "n": 1, "ts": w[0].isoformat()},
             {"user_name": "bo", "n": 2, "ts": (w[0] + timedelta(seconds=0.5)).isoformat()},
             {"user_name": "ana", "n": 3, "ts": (w[1] + timedelta(seconds=1)).isoformat()}],
            [{"user_name": "bo", "n": 4, "ts": w[1].isoformat()},
             {"user_name": "ana", "n": 13, "ts": w[1].isoformat()},
             {"user_name": "bo", "n": 5, "ts": (w[2] + timedelta(seconds=1.5)).isoformat()},
             {"user_name": "cy", "n": "not a number", "ts": w[2].isoformat()}],
            [{"user_name": "cy", "n": 6, "ts": (w[2] + timedelta(seconds=0.1)).isoformat()}],
        ]
        for events in batches:
            reply = requests.post(f"{api}/pipelines/clicks/events", json=events, headers=AUTH,
                                  timeout=60)
            assert reply.status_code == 200, reply.text
        accepted = [e for b in batches for e in b if isinstance(e["n"], int)]

        pulled = subscriber.pull(subscription=tap, max_messages=1, timeout=30)
        first = pulled.received_messages[0].message
        publisher.publish(topic, first.data, **dict(first.attributes)).result(timeout=30)

        time.sleep(max(0.0, (w[2] + timedelta(seconds=WINDOW_SECONDS + 0.5)
                             - datetime.now(timezone.utc)).total_seconds()))
        _tick(publisher, topic)  # the last window has ended
        expected = _expected(accepted)
        files = wait_for(lambda: (lambda f: f if _per_window(f) == expected else None)(
            _read_lake(gcs, "lake/clicks")), timeout=RUN_SECONDS,
            message="every accepted event in the lake")
    finally:
        _tick(publisher, topic)  # cancel() joins a pull that may wait 30 s for a message
        result.cancel()
        subscriber.delete_subscription(subscription=tap)

    # Each event once, in its window's file under its partition; the bad record refused.
    assert _per_window(files) == expected
    assert all(name.startswith("u=") and f"-{pipeline_id}.parquet" in name for name in files)
    assert [k for k in gcs.objects("lake/clicks") if k.startswith("_tmp/")] == []
    monitor = _call(api, "monitor", name="clicks")
    assert (monitor["events_in"], monitor["events_rejected"]) == (len(accepted), 1)

    # The API's status follows the job's: stop drains it, and ends when Dataflow says DRAINED.
    job_id = monitor["job"]["job_id"]
    stopped: dict[str, Any] = {}
    stopper = threading.Thread(target=lambda: stopped.update(_call(api, "stop", name="clicks")))
    stopper.start()
    wait_for(lambda: dataflow.calls("PUT", job_id), message="the drain request")
    [drain] = dataflow.calls("PUT", job_id)
    assert drain.job is not None and drain.job["requestedState"] == "JOB_STATE_DRAINING"
    dataflow.script_states(job_id, ["JOB_STATE_DRAINING", "JOB_STATE_DRAINED"])
    stopper.join(120)
    assert stopped["status"] == "stopped"
