"""A ``runner: dataflow`` pipeline over HTTP: lifecycle through the engine, ingest through Pub/Sub.

The API is the real app (Flask's test client); the transport is the real
``PubSubTransport`` on the real Pub/Sub emulator, read back with
google-cloud-pubsub; the engine is ``RecordingEngine`` (Dataflow itself
cannot run here; the real ``DataflowEngine`` has its own suite). Webhook
events are read from the outbox, where the dispatcher would pick them up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import select

from beam_pipelines.catalog.store import EngineJob, LogEntry
from beam_pipelines.errors import StorageError, Unavailable
from beam_pipelines.runners.base import JobHandle, JobState, RunnerRegistry
from beam_pipelines.runners.distributed import (
    SAMPLE_ROWS,
    TRIM_EVERY,
    DistributedRunner,
    job_name,
)
from beam_pipelines.runners.job_watcher import JobWatcher
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.runner import LocalRunner
from beam_pipelines.runners.transports.pubsub import PubSubTransport
from beam_pipelines.settings import data_plane_settings
from tests.beam_pipelines.runners.recording_engine import RecordingEngine
from tests.conftest import ADMIN_KEY
from tests.servers import PubSubEmulator
from transforms.batches import BATCH_ID, EVENTS, PIPELINE_ID, decode_batch

pytestmark = pytest.mark.pubsub

PROJECT = "test-project"
SCHEMA = [{"name": "n", "type": "int64", "required": True}, {"name": "s", "type": "string"}]
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def engine(pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> RecordingEngine:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host_port)
    return RecordingEngine(PubSubTransport(PROJECT))


class Api:
    """The app's test client with an admin key; ``ok`` expects a 200."""

    def __init__(self, app: Any) -> None:
        from control_api import context
        from control_api.webhooks.outbox import Outbox

        self.app = app
        self.client = app.test_client()
        self.ctx = context.of(app)
        self.store = self.ctx.store
        self.outbox = Outbox(self.store)

    def call(self, operation: str, params: dict[str, Any], **options: Any) -> Any:
        body = {"operation": operation, "parameters": params, **({"options": options}
                                                                  if options else {})}
        return self.client.post("/pipeline", json=body, headers=AUTH)

    def ok(self, operation: str, params: dict[str, Any], **options: Any) -> Any:
        response = self.call(operation, params, **options)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["data"]

    def ndjson(self, name: str, events: list[dict[str, Any]]) -> Any:
        body = "".join(json.dumps(e) + "\n" for e in events)
        return self.client.post(f"/pipelines/{name}/events", data=body,
                                headers={**AUTH, "Content-Type": "application/x-ndjson"})

    def outbox_events(self, pipeline_id: str) -> list[tuple[str, dict[str, Any]]]:
        from control_api.tables import WebhookEvent

        with self.store.reading() as s:
            rows = s.scalars(select(WebhookEvent).where(WebhookEvent.pipeline_id == pipeline_id)
                             .order_by(WebhookEvent.id)).all()
            return [(r.type, json.loads(r.data)) for r in rows]

    def logs(self, name: str) -> list[str]:
        return [e["message"] for e in self.ok("logs", {"name": name})["logs"]]


@pytest.fixture
def api(tmp_path: Path, engine: RecordingEngine) -> Api:
    return _api_on(tmp_path, engine, publish_timeout_s=2.0)


def _api_on(tmp_path: Path, engine: RecordingEngine, *, publish_timeout_s: float) -> Api:
    """The app, its ``dataflow`` runner on ``engine`` announcing to the outbox; a webhook
    subscribed to the job's events, so each is recorded there."""
    from control_api import create_app

    app = create_app({"DATA_DIR": str(tmp_path / "data"), "API_KEY": ADMIN_KEY,
                      "RATE_LIMIT": 0, "TESTING": True, "WEBHOOK_ALLOW_PRIVATE": True})
    api = Api(app)
    data_dir = api.ctx.settings.data_dir
    runner = DistributedRunner(api.store, data_dir, engine, events=api.outbox,
                               publish_timeout_s=publish_timeout_s, publish_attempts=2,
                               stop_poll_s=0.05)
    api.ctx.service.runners = RunnerRegistry({"direct": LocalRunner(api.store, data_dir),
                                              "dataflow": runner})
    hook = api.client.post("/webhooks", json={"url": "http://127.0.0.1:9/hook",
                                              "events": ["pipeline.failed", "pipeline.stopped",
                                                         "pipeline.started"]}, headers=AUTH)
    assert hook.status_code == 200, hook.get_json()
    return api


def _create(api: Api, name: str, **runner_options: Any) -> str:
    options = {"project": PROJECT, **runner_options}
    return str(api.ok("create", {"name": name, "schema": SCHEMA, "sql": "SELECT n, s FROM events",
                                 "runner": {"type": "dataflow", "options": options}})["id"])


def _pull(transport: PubSubTransport, pipeline_id: str, expected: int) -> list[Any]:
    """Every message on the subscription, acknowledged, once ``expected`` arrived."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    subscription = transport.subscription_path(pipeline_id)
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=100, timeout=5)
        if response.received_messages:
            got.extend(m.message for m in response.received_messages)
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[m.ack_id for m in response.received_messages])
    # Nothing more: every accepted request arrives once.
    extra = subscriber.pull(subscription=subscription, max_messages=100, timeout=5,
                            return_immediately=True)
    return got + [m.message for m in extra.received_messages]


def _exists(transport: PubSubTransport, pipeline_id: str) -> tuple[bool, bool]:
    from google.api_core.exceptions import NotFound
    from google.cloud import pubsub_v1

    found = []
    for get in (lambda: pubsub_v1.PublisherClient().get_topic(
                    topic=transport.topic_path(pipeline_id), timeout=10),
                lambda: pubsub_v1.SubscriberClient().get_subscription(
                    subscription=transport.subscription_path(pipeline_id), timeout=10)):
        try:
            get()
            found.append(True)
        except NotFound:
            found.append(False)
    return found[0], found[1]


def _job_id(api: Api, pipeline_id: str) -> str | None:
    with api.store.reading() as s:
        job = s.get(EngineJob, pipeline_id)
        return None if job is None else job.job_id


def test_start_launches_and_every_accepted_event_arrives_once_as_arrow(
        api: Api, engine: RecordingEngine) -> None:
    pipeline_id = _create(api, "clicks")
    assert engine.names() == [] and _exists(engine.transport, pipeline_id) == (False, False)

    started = api.ok("start", {"name": "clicks"})
    assert started["status"] == "running"
    assert engine.names() == ["check", "launch"]
    assert engine.last("check").options == {"project": PROJECT}
    request = engine.last("launch").request
    assert request is not None
    assert (request.pipeline_id, request.job_name, request.sql, request.version,
            request.savepoint) == (pipeline_id, job_name(pipeline_id), "SELECT n, s FROM events",
                                   1, None)
    schema = request.input_schema
    assert schema.names == ["n", "s", "_ingested_at", "_event_time"]
    assert (schema.field("n").type, schema.field("s").type) == (pa.int64(), pa.string())
    assert request.definition["runner"] == {"type": "dataflow", "options": {"project": PROJECT}}
    assert _exists(engine.transport, pipeline_id) == (True, True)
    assert _job_id(api, pipeline_id) == "job-1"

    first = api.ndjson("clicks", [{"n": 1, "s": "a"}, {"n": 2}, {"s": "no n"}]).get_json()["data"]
    assert first["accepted"] == 2
    assert [(r["index"], r["code"]) for r in first["rejected"]] == [(2, "missing_field")]
    second = api.ok("ingest", {"name": "clicks", "events": [{"n": 3, "s": "c"}]})
    assert second == {"accepted": 1, "rejected": []}

    messages = _pull(engine.transport, pipeline_id, expected=2)
    assert len(messages) == 2
    tables = [decode_batch(m.data) for m in messages]
    assert sorted(n for t in tables for n in t.column("n").to_pylist()) == [1, 2, 3]
    assert all(t.schema.names == ["n", "s", "_ingested_at", "_event_time"] for t in tables)
    for message, table in zip(messages, tables, strict=True):
        assert message.attributes[PIPELINE_ID] == pipeline_id
        assert message.attributes[EVENTS] == str(table.num_rows)
        assert len(message.attributes[BATCH_ID]) == 32
    assert len({m.attributes[BATCH_ID] for m in messages}) == 2

    ledger = EventBuffer(buffer_path(api.ctx.settings.data_dir, pipeline_id))
    assert [(d["index"], d["code"], json.loads(str(d["record"])))
            for d in ledger.dead_letters()] == [(2, "missing_field", {"s": "no n"})]
    monitor = api.ok("monitor", {"name": "clicks"})
    assert (monitor["events_in"], monitor["events_rejected"], monitor["status"]) == (3, 1,
                                                                                     "running")
    # What a streaming job cannot report is null, not 0.
    for unknown in ("events_out", "bytes_out", "files_written", "epochs", "backlog_events",
                    "last_commit_at"):
        assert monitor[unknown] is None, unknown
    assert monitor["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert monitor["throughput"]["out_eps"] is None and monitor["throughput"]["in_eps"] > 0
    assert monitor["job"]["job_id"] == "job-1"

    # A dry run reads the ledger's recent events.
    dry = api.ok("transform", {"name": "clicks", "sql": "SELECT n * 10 AS m FROM events",
                               "dry_run": True})
    assert sorted(r["m"] for r in dry["rows"]) == [10, 20, 30]


def test_lifecycle_reaches_the_engine_and_statuses_follow(api: Api,
                                                          engine: RecordingEngine) -> None:
    pipeline_id = _create(api, "life")
    api.ok("start", {"name": "life"})

    engine.metrics["job-1"] = {"events_out": 7, "bytes_out": 700}
    assert api.ok("pause", {"name": "life"})["status"] == "paused"
    assert engine.names()[-1] == "pause" and engine.last("pause").handle.job_id == "job-1"

    # Paused: the SQL changes for the next launch, no engine call.
    calls = len(engine.names())
    assert api.ok("transform", {"name": "life", "sql": "SELECT n FROM events"})["version"] == 2
    assert len(engine.names()) == calls

    # Resume launches again (the drained job is asked first), with the new SQL.
    assert api.ok("resume", {"name": "life"})["status"] == "running"
    assert engine.names()[-2:] == ["check", "launch"]
    relaunch = engine.last("launch").request
    assert relaunch is not None and (relaunch.sql, relaunch.version) == ("SELECT n FROM events", 2)
    assert _job_id(api, pipeline_id) == "job-2"

    # Running: transform updates the job in place.
    assert api.ok("transform", {"name": "life", "sql": "SELECT s FROM events"})["version"] == 3
    update = engine.last("update")
    assert update.handle.job_id == "job-2" and update.request.sql == "SELECT s FROM events"
    assert _job_id(api, pipeline_id) == "job-3"

    # Stop drains and waits for DRAINED.
    engine.metrics["job-3"] = {"events_out": 5, "bytes_out": 500, "files_written": 2}
    stopped = api.ok("stop", {"name": "life"})
    assert stopped["status"] == "stopped"
    assert engine.last("drain").handle.job_id == "job-3"
    monitor = api.ok("monitor", {"name": "life"})
    assert (monitor["events_out"], monitor["bytes_out"], monitor["files_written"]) == (5, 500, 2)
    assert [t for t, _ in api.outbox_events(pipeline_id)].count("pipeline.stopped") == 1
    logs = api.logs("life")
    assert "dataflow job job-3: DRAINING → DRAINED" in logs
    assert any(m.startswith("dataflow job job-1: launched") for m in logs)

    # Delete: a drained job is not cancelled; topic and subscription go.
    assert _exists(engine.transport, pipeline_id) == (True, True)
    assert api.ok("delete", {"name": "life"}) == {"deleted": True}
    assert "cancel" not in engine.names()
    assert _exists(engine.transport, pipeline_id) == (False, False)
    assert _job_id(api, pipeline_id) is None
    assert not Path(buffer_path(api.ctx.settings.data_dir, pipeline_id)).exists()


def test_delete_cancels_a_running_job(api: Api, engine: RecordingEngine) -> None:
    pipeline_id = _create(api, "gone")
    api.ok("start", {"name": "gone"})
    assert api.ok("delete", {"name": "gone"}) == {"deleted": True}
    assert engine.names()[-1] == "cancel" and engine.last("cancel").handle.job_id == "job-1"
    assert _exists(engine.transport, pipeline_id) == (False, False)
    assert api.call("ingest", {"name": "gone", "events": [{"n": 1}]}).status_code == 404


def test_a_flink_like_pause_resumes_from_its_savepoint(api: Api, engine: RecordingEngine) -> None:
    engine.savepoints = True
    _create(api, "saved")
    api.ok("start", {"name": "saved"})
    api.ok("pause", {"name": "saved"})
    api.ok("resume", {"name": "saved"})
    request = engine.last("launch").request
    assert request is not None and request.savepoint == "file:///sp/job-1"


def test_the_watcher_fails_a_failed_job_and_stops_a_drained_one(
        api: Api, engine: RecordingEngine) -> None:
    failing = _create(api, "failing")
    draining = _create(api, "draining")
    api.ok("start", {"name": "failing"})
    api.ok("start", {"name": "draining"})
    engine.drain_views = 10**6  # the stop's wait times out: the watcher finishes it
    timed_out = api.call("stop", {"name": "draining"}, timeout=200)
    assert timed_out.status_code == 504 and timed_out.get_json()["error"]["code"] == "TIMEOUT"
    assert api.ok("get", {"name": "draining"})["status"] == "stopping"

    watcher = JobWatcher(api.store, {"dataflow": engine}, api.outbox, call_timeout=10)
    try:
        engine.states["job-1"] = JobState.FAILED
        engine.messages["job-1"] = "Workflow failed: out of quota"
        engine.states["job-2"] = JobState.DRAINED
        watcher.tick()
        watcher.tick()  # nothing changed: nothing announced twice
    finally:
        watcher.close()

    got = api.ok("get", {"name": "failing"})
    assert got["status"] == "failed"
    assert got["last_error"] == ("the dataflow job job-1 ended: FAILED: Workflow failed: out of "
                                 "quota")
    failed = [d for t, d in api.outbox_events(failing) if t == "pipeline.failed"]
    assert len(failed) == 1 and failed[0]["error"] == got["last_error"]
    assert "dataflow job job-1: PENDING → FAILED: Workflow failed: out of quota" in \
        api.logs("failing")

    assert api.ok("get", {"name": "draining"})["status"] == "stopped"
    assert [t for t, _ in api.outbox_events(draining)].count("pipeline.stopped") == 1

    # Failed: a start launches a new job.
    assert api.ok("start", {"name": "failing"})["status"] == "running"
    assert _job_id(api, failing) == "job-3"


def _location(api: Api, pipeline_id: str) -> str | None:
    with api.store.reading() as s:
        job = s.get(EngineJob, pipeline_id)
        assert job is not None
        return job.location


def test_a_job_is_addressed_where_it_was_launched_after_a_restart(
        api: Api, engine: RecordingEngine, tmp_path: Path) -> None:
    """The catalog keeps the handle's location: another process (a restarted server, another
    worker, the watcher in serve), whose engine would launch elsewhere, still reaches the job."""
    engine.location = "cluster-a"
    pipeline_id = _create(api, "where")
    api.ok("start", {"name": "where"})
    assert _location(api, pipeline_id) == "cluster-a"

    restarted = RecordingEngine(engine.transport, location="cluster-b")
    restarted.states = engine.states  # one service, seen from two processes
    other = _api_on(tmp_path, restarted, publish_timeout_s=2.0)
    watcher = JobWatcher(other.store, {"dataflow": restarted}, other.outbox, call_timeout=10)
    try:
        watcher.tick()
    finally:
        watcher.close()
    assert restarted.last("view").handle.location == "cluster-a"

    assert other.ok("pause", {"name": "where"})["status"] == "paused"
    assert restarted.last("pause").handle == JobHandle("job-1", job_name(pipeline_id),
                                                       location="cluster-a")
    assert _location(other, pipeline_id) == "cluster-a"

    # Resume asks the old job where it ran, and launches the new one where this process does.
    assert other.ok("resume", {"name": "where"})["status"] == "running"
    assert restarted.last("view").handle.job_id == "job-1"
    assert restarted.last("view").handle.location == "cluster-a"
    assert (_job_id(other, pipeline_id), _location(other, pipeline_id)) == ("job-2", "cluster-b")

    # A row recorded before locations were kept: the handle says so, the engine falls back.
    with other.store.session() as s:
        job = s.get(EngineJob, pipeline_id)
        assert job is not None
        job.location = None
    assert other.ok("stop", {"name": "where"})["status"] == "stopped"
    drained = restarted.last("drain").handle
    assert (drained.job_id, drained.location) == ("job-2", None)


def test_resume_while_the_previous_job_still_drains_is_a_conflict(
        api: Api, engine: RecordingEngine) -> None:
    _create(api, "slow")
    api.ok("start", {"name": "slow"})
    engine.drain_views = 10**6
    api.ok("pause", {"name": "slow"})
    refused = api.call("resume", {"name": "slow"})
    assert refused.status_code == 409
    assert "still DRAINING" in refused.get_json()["error"]["message"]
    assert api.ok("get", {"name": "slow"})["status"] == "paused"


def test_a_missing_setting_is_named_and_nothing_is_launched(api: Api,
                                                            engine: RecordingEngine) -> None:
    pipeline_id = str(api.ok("create", {"name": "bare", "runner": {"type": "dataflow"}})["id"])
    refused = api.call("start", {"name": "bare"})
    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["details"]["field"] == "runner.options.project"
    assert "PIPELINE_DO_DATAFLOW_PROJECT" in error["message"]
    assert engine.names() == ["check"]
    assert api.ok("get", {"name": "bare"})["status"] == "created"
    assert _exists(engine.transport, pipeline_id) == (False, False)
    # It never ran: a stop has nothing to drain.
    assert api.ok("stop", {"name": "bare"})["status"] == "stopped"
    assert engine.names() == ["check"]


def test_a_server_without_a_pubsub_project_names_the_variable(
        tmp_path: Path, engine: RecordingEngine) -> None:
    engine.transport = PubSubTransport(None)
    from beam_pipelines.catalog.store import Store, default_database_url
    from beam_pipelines.errors import DefinitionError

    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    runner = DistributedRunner(store, str(tmp_path), engine)
    runner.create("pl_0123456789abcdef")
    table = pa.table({"n": [1]})
    with pytest.raises(DefinitionError) as refused:
        runner.ingest("pl_0123456789abcdef", table, [], raw_bytes=10)
    assert refused.value.field == "runner.options.project"
    assert "PIPELINE_DO_DATAFLOW_PROJECT" in str(refused.value)
    assert runner.ingest_counters("pl_0123456789abcdef", 0)["events_in"] == 0


def test_a_publish_that_cannot_be_confirmed_fails_with_503_and_acks_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not PubSubEmulator.available():
        pytest.skip("the Pub/Sub emulator is not installed here")
    with PubSubEmulator() as own:  # its own: this test stops it
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.host_port)
        engine = RecordingEngine(PubSubTransport(PROJECT))
        api = _api_on(tmp_path, engine, publish_timeout_s=1.0)
        pipeline_id = _create(api, "outage")
        api.ok("start", {"name": "outage"})
        assert api.ok("ingest", {"name": "outage", "events": [{"n": 1}]})["accepted"] == 1
        own.stop()
        response = api.call("ingest", {"name": "outage", "events": [{"n": 2}, {"x": 1}]})
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        error = response.get_json()["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE"
        assert "nothing was accepted" in error["message"]
        monitor = api.ok("monitor", {"name": "outage"})
        assert (monitor["events_in"], monitor["events_rejected"]) == (1, 0)
        ledger = EventBuffer(buffer_path(api.ctx.settings.data_dir, pipeline_id))
        assert ledger.dead_letters() == []


def test_the_job_log_names_each_call(api: Api, engine: RecordingEngine) -> None:
    pipeline_id = _create(api, "logged")
    api.ok("start", {"name": "logged"})
    api.ok("pause", {"name": "logged"})
    with api.store.reading() as s:
        messages = s.scalars(select(LogEntry.message).where(LogEntry.pipeline_id == pipeline_id)
                             .order_by(LogEntry.id)).all()
    assert "dataflow job job-1: launched with sql version 1" in messages
    assert "dataflow job job-1: paused" in messages


class FlakyTransport:
    """The real transport, whose first ``failures`` publishes fail as an outage would."""

    def __init__(self, real: PubSubTransport, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.attempts: list[dict[str, str]] = []

    def ensure(self, pipeline_id: str) -> None:
        self.real.ensure(pipeline_id)

    def publish(self, pipeline_id: str, data: bytes, attributes: Any, timeout_s: float) -> None:
        self.attempts.append(dict(attributes))
        if len(self.attempts) <= self.failures:
            raise Unavailable("Pub/Sub did not confirm the publish", {"transport": "pubsub"})
        self.real.publish(pipeline_id, data, attributes, timeout_s)

    def remove(self, pipeline_id: str) -> None:
        self.real.remove(pipeline_id)


def test_a_transient_failure_is_retried_with_the_same_batch_id(
        api: Api, engine: RecordingEngine) -> None:
    real = engine.transport
    flaky = engine.transport = FlakyTransport(real, failures=1)
    pipeline_id = _create(api, "flaky")
    assert api.ok("ingest", {"name": "flaky", "events": [{"n": 1}, {"n": 2}]})["accepted"] == 2
    assert len(flaky.attempts) == 2 and flaky.attempts[0] == flaky.attempts[1]
    messages = _pull(real, pipeline_id, expected=1)
    assert [m.attributes[BATCH_ID] for m in messages] == [flaky.attempts[0][BATCH_ID]]
    assert api.ok("monitor", {"name": "flaky"})["events_in"] == 2


def test_a_full_disk_refuses_before_the_publish_so_nothing_is_sent_twice(
        api: Api, engine: RecordingEngine) -> None:
    """The ledger's disk floor refuses the request before the events reach the topic:
    refused after the publish, the client's retry would put them there twice."""
    real = engine.transport
    recording = engine.transport = FlakyTransport(real, failures=0)
    with pytest.MonkeyPatch.context() as floor:
        floor.setenv("PIPELINE_DO_MIN_FREE_DISK_BYTES", str(1 << 60))
        data_plane_settings.cache_clear()
        try:
            _create(api, "full")
            response = api.call("ingest", {"name": "full", "events": [{"n": 1}, {"n": 2}]})
        finally:
            floor.undo()
            data_plane_settings.cache_clear()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["error"]["details"]["reason"] == "disk_full"
    assert recording.attempts == []
    assert api.ok("monitor", {"name": "full"})["events_in"] == 0


def test_a_ledger_failing_after_a_confirmed_publish_still_acks_the_events_once(
        api: Api, engine: RecordingEngine, caplog: pytest.LogCaptureFixture) -> None:
    """Once the broker confirmed, the events are in: a 503 then would have the client
    send them again (a new batch id, a duplicate in the lake). The ledger's failure
    is logged and the request acknowledged."""
    real = engine.transport
    recording = engine.transport = FlakyTransport(real, failures=0)
    pipeline_id = _create(api, "ledger")

    def failing(*_args: Any, **_kwargs: Any) -> None:
        raise StorageError("the event buffer could not be written; retry")

    with pytest.MonkeyPatch.context() as broken:
        broken.setattr(EventBuffer, "append", failing)
        reply = api.ok("ingest", {"name": "ledger", "events": [{"n": 1}, {"n": 2}]})
    assert reply["accepted"] == 2
    assert len(recording.attempts) == 1
    (message,) = _pull(real, pipeline_id, expected=1)
    assert message.attributes[EVENTS] == "2"
    assert decode_batch(message.data).column("n").to_pylist() == [1, 2]
    assert "2 events published to its transport but not counted" in caplog.text


def test_the_ledger_keeps_recent_requests_only_and_counts_all(
        api: Api, engine: RecordingEngine) -> None:
    pipeline_id = _create(api, "many")
    requests = SAMPLE_ROWS + 2 * TRIM_EVERY
    for i in range(requests):
        api.ok("ingest", {"name": "many", "events": [{"n": i}]})
    ledger = EventBuffer(buffer_path(api.ctx.settings.data_dir, pipeline_id))
    assert ledger.totals()["events_in"] == requests
    assert SAMPLE_ROWS <= ledger.backlog(0).events < SAMPLE_ROWS + TRIM_EVERY
    dry = api.ok("transform", {"name": "many", "sql": "SELECT n FROM events", "dry_run": True,
                               "limit": 3})
    assert [r["n"] for r in dry["rows"]] == [requests - 3, requests - 2, requests - 1]
    assert len(_pull(engine.transport, pipeline_id, expected=requests)) == requests


def test_counters_are_shared_by_every_api_process(api: Api, engine: RecordingEngine,
                                                  tmp_path: Path) -> None:
    """Two apps on one data dir, as two gunicorn workers are: one ledger, one count."""
    other = _api_on(tmp_path, engine, publish_timeout_s=2.0)
    pipeline_id = _create(api, "shared")
    assert api.ok("ingest", {"name": "shared", "events": [{"n": 1}, {"x": 0}]})["accepted"] == 1
    assert other.ok("ingest", {"name": "shared", "events": [{"n": 2}, {"n": 3}]})["accepted"] == 2
    for each in (api, other):
        monitor = each.ok("monitor", {"name": "shared"})
        assert (monitor["events_in"], monitor["events_rejected"]) == (3, 1)
    assert len(_pull(engine.transport, pipeline_id, expected=2)) == 2


def test_metrics_leave_out_what_a_distributed_job_cannot_report(
        api: Api, engine: RecordingEngine) -> None:
    pipeline_id = _create(api, "metered")
    api.ok("ingest", {"name": "metered", "events": [{"n": 1}, {"n": 2}]})
    response = api.client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    lines = [line for line in response.get_data(as_text=True).splitlines()
             if f'pipeline_id="{pipeline_id}"' in line]
    assert any(line.startswith("pipeline_do_events_in_total") and line.endswith(" 2.0")
               for line in lines), lines
    for unreported in ("pipeline_do_events_out", "pipeline_do_backlog_events",
                       'direction="out"'):
        assert not any(unreported in line for line in lines), unreported


def test_dead_letters_of_a_distributed_pipeline_are_listed_and_replayed_onto_its_topic(
        api: Api, engine: RecordingEngine) -> None:
    """The ledger keeps a dataflow pipeline's dead letters: ``dead_letters`` lists them and
    a replay publishes what is accepted now to the topic, once, however often it runs."""
    pipeline_id = _create(api, "clicks")
    api.ok("start", {"name": "clicks"})
    reply = api.ndjson("clicks", [{"n": 1}, {"s": "no n"}]).get_json()["data"]
    assert reply["accepted"] == 1
    assert len(_pull(engine.transport, pipeline_id, expected=1)) == 1
    # A record an earlier limit refused, as the ledger keeps it, next to the real one.
    ledger = EventBuffer(buffer_path(api.ctx.settings.data_dir, pipeline_id))
    ledger.append(pa.schema([("n", pa.int64())]).empty_table(),
                  [(0, "too_deep", "nested too deep", json.dumps({"n": 2, "s": "b"}))])

    listed = api.ok("dead_letters", {"name": "clicks"})
    assert [d["code"] for d in listed["dead_letters"]] == ["too_deep", "missing_field"]
    ids = [d["id"] for d in listed["dead_letters"]]
    first = api.ok("replay_dead_letters", {"name": "clicks", "ids": ids})
    assert first["accepted"] == 1 and [r["code"] for r in first["rejected"]] == ["missing_field"]
    assert api.ok("replay_dead_letters", {"name": "clicks", "ids": ids})["accepted"] == 0

    messages = _pull(engine.transport, pipeline_id, expected=1)
    assert [decode_batch(m.data).column("n").to_pylist() for m in messages] == [[2]]
    assert api.ok("monitor", {"name": "clicks"})["events_in"] == 2
    [left] = api.ok("dead_letters", {"name": "clicks"})["dead_letters"]
    assert (left["code"], left["attempts"]) == ("missing_field", 3)


def test_a_schema_change_updates_the_running_job_with_the_wider_input(
        api: Api, engine: RecordingEngine) -> None:
    _create(api, "wide")
    api.ok("start", {"name": "wide"})
    assert "x" not in engine.last("launch").request.input_schema.names
    wider = [*SCHEMA, {"name": "x", "type": "float64"}]
    assert api.ok("transform", {"name": "wide", "schema": wider})["version"] == 2
    update = engine.last("update").request
    assert update.input_schema.field("x").type == pa.float64()
    assert update.sql == "SELECT n, s FROM events" and update.version == 2
    assert update.definition["schema"][-1] == {"name": "x", "type": "float64", "required": False}
