"""The Dataflow engine against a recording of the v1b3 wire contract, staging to a real GCS server.

Dataflow itself cannot run here. Beam's own ``DataflowRunner`` submits the
job to ``tests.fakes.dataflow_server`` (REST over plain http: the endpoint's
host is ``localhost``) and stages ``pipeline.pb`` to gcp-storage-emulator; the
tests assert the exact requests the service would get and the staged
pipeline proto, and script the job states the service reports.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pytest

from beam_pipelines.compiler.streaming_graph import STAGE_NAMES
from beam_pipelines.errors import ConflictError, DefinitionError, PipelineDoError, Unavailable
from beam_pipelines.model.definition import parse_definition
from beam_pipelines.runners.base import JobHandle, JobRequest, JobState
from beam_pipelines.runners.dataflow import DataflowEngine, job_state, user_counters
from tests.fakes.dataflow_server import DataflowServer
from tests.servers import GcsServer, create_gcs_bucket, free_port, gcs_client

pytestmark = pytest.mark.dataflow

PROJECT, REGION, BUCKET = "test-project", "us-central1", "pdo-staging"
JOBS = f"/v1b3/projects/{PROJECT}/locations/{REGION}/jobs"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/pdo-clicks"
IMAGE = f"us-central1-docker.pkg.dev/{PROJECT}/pipeline-do/pipeline-do:test"


class _Subscriptions:
    """The part of ``PubSubTransport`` the engine uses: where a pipeline's job reads."""

    def subscription_path(self, pipeline_id: str) -> str:
        return f"projects/{PROJECT}/subscriptions/pdo-{pipeline_id}"


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsServer]:
    from beam_pipelines.storage.process import apply_sink_environment, reset_process_state

    with GcsServer() as server:
        create_gcs_bucket(server.endpoint_url, BUCKET)
        # Beam's gs:// client: this server, anonymous (no 25 s search for credentials).
        apply_sink_environment(f"gs://{BUCKET}/x", {"endpoint_url": server.endpoint_url})
        try:
            yield server
        finally:
            reset_process_state()


@pytest.fixture
def dataflow() -> Iterator[DataflowServer]:
    with DataflowServer() as server:
        yield server


def _env(dataflow: DataflowServer) -> dict[str, str]:
    return {"PIPELINE_DO_DATAFLOW_PROJECT": PROJECT, "PIPELINE_DO_DATAFLOW_REGION": REGION,
            "PIPELINE_DO_DATAFLOW_TEMP_LOCATION": f"gs://{BUCKET}/tmp",
            "PIPELINE_DO_DATAFLOW_STAGING_LOCATION": f"gs://{BUCKET}/staging",
            "PIPELINE_DO_DATAFLOW_SDK_CONTAINER_IMAGE": IMAGE,
            "PIPELINE_DO_DATAFLOW_ENDPOINT": dataflow.endpoint}


@pytest.fixture
def engine(gcs: GcsServer, dataflow: DataflowServer) -> DataflowEngine:
    return DataflowEngine(_Subscriptions(), env=_env(dataflow), timeout_s=10)


def _request(sql: str = "SELECT user, n FROM events", version: int = 1,
             **options: Any) -> JobRequest:
    definition = parse_definition(
        {"name": "clicks", "sql": sql, "schema": [{"name": "user", "type": "string"},
                                                  {"name": "n", "type": "int64"}],
         "sink": {"uri": "gs://lake/clicks", "roll": {"interval_seconds": 60}},
         "runner": {"type": "dataflow",
                    "options": {"allowed_lateness_seconds": 30, **options}}},
        default_sink_uri="gs://lake/{name}", local_sink_roots=[])
    schema = pa.schema([("user", pa.string()), ("n", pa.int64())])
    return JobRequest(pipeline_id="clicks", job_name="pdo-clicks", definition=definition.to_dict(),
                      sql=sql, version=version, input_schema=schema)


def _staged_pipeline(gcs: GcsServer, create: Any) -> Any:
    """The ``pipeline.pb`` a create request points at, read from GCS and parsed."""
    from apache_beam.portability.api import beam_runner_api_pb2

    url = create.job["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]
    assert url.startswith(f"gs://{BUCKET}/staging/pdo-clicks.") and url.endswith("/pipeline.pb")
    blob = gcs_client(gcs.endpoint_url).bucket(BUCKET).blob(url[len(f"gs://{BUCKET}/"):])
    data = blob.download_as_bytes()
    return beam_runner_api_pb2.Pipeline.FromString(data), data


def _container_images(proto: Any) -> set[str]:
    from apache_beam.portability.api import beam_runner_api_pb2

    return {beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
            for env in proto.components.environments.values()}


def _top_level_names(proto: Any) -> list[str]:
    """The job's top-level transform names (under Beam's one unnamed root, if it has one)."""
    transforms = proto.components.transforms
    roots = [transforms[i] for i in proto.root_transform_ids]
    if len(roots) == 1 and roots[0].subtransforms and roots[0].unique_name not in STAGE_NAMES:
        roots = [transforms[i] for i in roots[0].subtransforms]
    return [t.unique_name for t in roots]


# -- launch / resume ----------------------------------------------------------

def test_launch_creates_a_streaming_job_and_stages_its_pipeline(
        engine: DataflowEngine, dataflow: DataflowServer, gcs: GcsServer) -> None:
    handle = engine.launch(_request())

    [create] = dataflow.calls()
    assert (create.method, create.path) == ("POST", JOBS)
    assert create.job is not None
    assert create.job["name"] == "pdo-clicks" == handle.job_name
    assert create.job["type"] == "JOB_TYPE_STREAMING"
    assert "replaceJobId" not in create.job and "transformNameMapping" not in create.job
    options = create.job["environment"]["sdkPipelineOptions"]["options"]
    assert options["streaming"] is True and options["update"] is False
    assert (options["project"], options["region"]) == (PROJECT, REGION)
    assert dataflow.state_of(handle.job_id) == JobState.RUNNING  # the id the service gave

    proto, data = _staged_pipeline(gcs, create)
    assert _top_level_names(proto) == list(STAGE_NAMES)
    assert SUBSCRIPTION.encode() in data  # the Read stage reads the pipeline's subscription
    assert _container_images(proto) == {IMAGE}  # workers run pipeline.do's image


def test_pause_drains_and_resume_launches_again_on_the_same_subscription(
        engine: DataflowEngine, dataflow: DataflowServer, gcs: GcsServer) -> None:
    first = engine.launch(_request())
    dataflow.clear()

    assert engine.pause(first) == first
    [drain] = dataflow.calls()
    assert (drain.method, drain.path) == ("PUT", f"{JOBS}/{first.job_id}")
    assert drain.body == {"requestedState": "JOB_STATE_DRAINING"}
    assert engine.view(first).state == JobState.DRAINING
    dataflow.script_states(first.job_id, [JobState.DRAINED])
    assert engine.view(first).state == JobState.DRAINED

    dataflow.clear()
    second = engine.launch(_request())
    [create] = dataflow.calls("POST")
    assert second.job_id != first.job_id and second.job_name == first.job_name
    assert create.job is not None and "replaceJobId" not in create.job
    _, data = _staged_pipeline(gcs, create)
    assert SUBSCRIPTION.encode() in data


def test_resume_while_the_old_job_still_drains_is_refused_by_name(
        engine: DataflowEngine, dataflow: DataflowServer) -> None:
    first = engine.launch(_request())
    engine.pause(first)  # the service keeps it JOB_STATE_DRAINING until it has drained

    with pytest.raises(ConflictError) as err:
        engine.launch(_request())
    assert "already runs a job of this name" in err.value.message
    assert dataflow.state_of(first.job_id) == JobState.DRAINING


def test_the_flex_template_launcher_submits_the_same_job_from_a_spec_in_gcs(
        gcs: GcsServer, dataflow: DataflowServer) -> None:
    """templates/dataflow/main.py's work: the options are the ones Dataflow passes a launcher."""
    from beam_pipelines.runners.dataflow_job import JobSpec, launcher_main, read_spec, write_spec

    request = _request()
    spec = JobSpec(request.pipeline_id, request.definition, request.sql, request.version,
                   request.input_schema, SUBSCRIPTION)
    uri = f"gs://{BUCKET}/staging/specs/pdo-clicks-1.json"
    write_spec(spec, uri)
    assert read_spec(uri) == spec

    launcher_main([f"--job_spec={uri}", f"--project={PROJECT}", f"--region={REGION}",
                   "--job_name=pdo-clicks", f"--temp_location=gs://{BUCKET}/tmp",
                   f"--staging_location=gs://{BUCKET}/staging",
                   f"--dataflow_endpoint={dataflow.endpoint}", "--no_auth"])

    [create] = dataflow.calls()
    assert (create.method, create.path) == ("POST", JOBS)
    assert create.job is not None and create.job["type"] == "JOB_TYPE_STREAMING"
    proto, data = _staged_pipeline(gcs, create)
    assert _top_level_names(proto) == list(STAGE_NAMES) and SUBSCRIPTION.encode() in data


TEMPLATE = f"gs://{BUCKET}/templates/pipeline-do.json"


def test_with_a_flex_template_launch_writes_the_spec_and_launches_the_template(
        engine: DataflowEngine, dataflow: DataflowServer) -> None:
    from beam_pipelines.runners.dataflow_job import read_spec

    request = _request(flex_template=TEMPLATE, max_num_workers=3)
    handle = engine.launch(request)

    [launch] = dataflow.calls()
    spec_uri = f"gs://{BUCKET}/staging/specs/pdo-clicks-1.json"
    assert (launch.method, launch.path) == (
        "POST", f"/v1b3/projects/{PROJECT}/locations/{REGION}/flexTemplates:launch")
    assert launch.body == {"launchParameter": {
        "jobName": "pdo-clicks", "containerSpecGcsPath": TEMPLATE,
        "parameters": {"job_spec": spec_uri},
        "environment": {"tempLocation": f"gs://{BUCKET}/tmp",
                        "stagingLocation": f"gs://{BUCKET}/staging",
                        "sdkContainerImage": IMAGE, "enableStreamingEngine": True,
                        "maxWorkers": 3}}}
    assert launch.launch is not None  # the API's LaunchFlexTemplateRequest parsed it
    spec = read_spec(spec_uri)
    assert (spec.subscription, spec.sql, spec.input_schema) == (
        SUBSCRIPTION, request.sql, request.input_schema)
    assert spec.definition == request.definition
    assert [engine.view(handle).state for _ in range(2)] == [JobState.PENDING, JobState.RUNNING]


def test_with_a_flex_template_update_launches_it_as_the_replacement(
        engine: DataflowEngine, dataflow: DataflowServer) -> None:
    old = engine.launch(_request(flex_template=TEMPLATE))
    dataflow.script_states(old.job_id, [JobState.RUNNING])
    dataflow.clear()

    new = engine.update(old, _request("SELECT user FROM events", 2, flex_template=TEMPLATE))

    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in dataflow.calls()] == [
        ("GET", old.job_id), ("GET", "jobs"), ("POST", "flexTemplates:launch")]
    body = dataflow.calls("POST")[0].body["launchParameter"]
    assert body["update"] is True and body["jobName"] == "pdo-clicks"
    assert body["transformNameMappings"] == {name: name for name in STAGE_NAMES}
    assert body["parameters"] == {"job_spec": f"gs://{BUCKET}/staging/specs/pdo-clicks-2.json"}
    assert new.job_id != old.job_id and dataflow.state_of(old.job_id) == JobState.UPDATED


def test_a_create_the_service_refuses_names_its_status_and_nothing_internal(
        engine: DataflowEngine, dataflow: DataflowServer) -> None:
    dataflow.fail_next("POST", 403, "PERMISSION_DENIED",
                       "Permission 'dataflow.jobs.create' denied on project test-project")
    with pytest.raises(ConflictError) as err:
        engine.launch(_request())
    assert err.value.message.startswith("could not create the Dataflow job: Dataflow answered "
                                        "HTTP 403")
    assert err.value.message.endswith("(PERMISSION_DENIED: Permission 'dataflow.jobs.create' "
                                      "denied on project test-project)")
    assert dataflow.endpoint not in err.value.message  # nothing of this process's own calls
    assert len(dataflow.calls("POST")) == 1  # a refusal is not retried


def test_a_create_the_service_never_answers_is_given_up_on(gcs: GcsServer,
                                                             dataflow: DataflowServer) -> None:
    engine = DataflowEngine(_Subscriptions(), env=_env(dataflow), submit_timeout_s=1)
    dataflow.stall_next("POST", 4)  # Beam's client has no timeout of its own
    with pytest.raises(Unavailable) as err:
        engine.launch(_request())
    assert "did not accept job 'pdo-clicks'" in err.value.message
    assert "may still be created" in err.value.message


# -- stop / delete --------------------------------------------------------------

def test_stop_drains_until_the_job_is_drained(engine: DataflowEngine,
                                              dataflow: DataflowServer) -> None:
    handle = engine.launch(_request())
    dataflow.clear()

    engine.drain(handle)
    dataflow.script_states(handle.job_id, [JobState.DRAINING, JobState.DRAINING,
                                           JobState.DRAINED])
    seen = []
    for _ in range(10):  # what DistributedRunner's wait does, bounded
        seen.append(engine.view(handle).state)
        if seen[-1] in JobState.TERMINAL:
            break
    assert seen == [JobState.DRAINING, JobState.DRAINING, JobState.DRAINED]
    puts = dataflow.calls("PUT")
    assert [(r.path, r.body) for r in puts] == [
        (f"{JOBS}/{handle.job_id}", {"requestedState": "JOB_STATE_DRAINING"})]
    gets = dataflow.calls("GET", rf"/jobs/{handle.job_id}$")
    assert len(gets) == 3


def test_delete_cancels_and_a_second_cancel_is_a_no_op(engine: DataflowEngine,
                                                       dataflow: DataflowServer) -> None:
    handle = engine.launch(_request())
    dataflow.clear()

    engine.cancel(handle)
    assert [(r.method, r.path, r.body) for r in dataflow.calls()] == [
        ("PUT", f"{JOBS}/{handle.job_id}", {"requestedState": "JOB_STATE_CANCELLED"})]
    assert engine.view(handle).state == JobState.CANCELLED

    dataflow.clear()
    engine.cancel(handle)  # the service refuses (the job ended): nothing left to cancel
    assert [r.method for r in dataflow.calls(pattern=rf"/jobs/{handle.job_id}$")] == ["PUT",
                                                                                      "GET"]


def test_drain_of_a_running_job_the_service_refuses_surfaces_its_status(
        engine: DataflowEngine, dataflow: DataflowServer) -> None:
    handle = JobHandle(job_id="2026-01-01_00_00_00-404", job_name="pdo-clicks")
    with pytest.raises(ConflictError) as err:
        engine.drain(handle)
    assert "HTTP 404" in err.value.message and "NOT_FOUND" in err.value.message
    assert "Traceback" not in err.value.message


# -- a job addressed where it was launched, from any process -------------------------

OTHER_PROJECT, OTHER_REGION = "other-project-7", "europe-west4"
OTHER_JOBS = f"/v1b3/projects/{OTHER_PROJECT}/locations/{OTHER_REGION}/jobs"


def test_a_fresh_engine_reaches_the_job_at_its_launch_location(
        engine: DataflowEngine, dataflow: DataflowServer) -> None:
    """Another process (the watcher in serve, a restarted server) has only the catalog's handle,
    and its environment names another project, region and endpoint (nothing answers there)."""
    handle = engine.launch(_request(project=OTHER_PROJECT, region=OTHER_REGION))
    [create] = dataflow.calls("POST")
    assert create.path == OTHER_JOBS
    assert handle.location == (f"{dataflow.endpoint}/v1b3/projects/{OTHER_PROJECT}/locations/"
                               f"{OTHER_REGION}")
    elsewhere = {**_env(dataflow),
                 "PIPELINE_DO_DATAFLOW_ENDPOINT": f"http://localhost:{free_port()}"}
    fresh = DataflowEngine(_Subscriptions(), env=elsewhere, timeout_s=10)
    bare = DataflowEngine(_Subscriptions(), env={}, timeout_s=10)  # no settings at all
    dataflow.clear()

    assert fresh.view(handle).state == JobState.RUNNING
    assert fresh.pause(handle) == handle
    assert bare.view(handle).state == JobState.DRAINING
    dataflow.script_states(handle.job_id, [JobState.DRAINED])
    assert bare.view(handle).state == JobState.DRAINED

    assert [(r.method, r.path, r.body) for r in dataflow.calls("PUT")] == [
        ("PUT", f"{OTHER_JOBS}/{handle.job_id}", {"requestedState": "JOB_STATE_DRAINING"})]
    assert {r.path.split("/jobs")[0] for r in dataflow.calls()} == {OTHER_JOBS[:-5]}


def test_a_fresh_engine_cancels_and_updates_the_job_at_its_launch_location(
        engine: DataflowEngine, dataflow: DataflowServer) -> None:
    old = engine.launch(_request(project=OTHER_PROJECT, region=OTHER_REGION))
    fresh = DataflowEngine(_Subscriptions(), env=_env(dataflow), timeout_s=10)
    dataflow.clear()

    new = fresh.update(old, _request("SELECT user FROM events", 2, project=OTHER_PROJECT,
                                     region=OTHER_REGION))

    assert new.location == old.location and new.job_id != old.job_id
    assert [(r.method, r.path) for r in dataflow.calls()] == [
        ("GET", f"{OTHER_JOBS}/{old.job_id}"), ("GET", OTHER_JOBS), ("GET", OTHER_JOBS),
        ("POST", OTHER_JOBS)]
    dataflow.clear()
    DataflowEngine(_Subscriptions(), env={}, timeout_s=10).cancel(new)
    assert [(r.method, r.path, r.body) for r in dataflow.calls()] == [
        ("PUT", f"{OTHER_JOBS}/{new.job_id}", {"requestedState": "JOB_STATE_CANCELLED"})]


def test_an_update_cannot_move_a_job_to_another_location(engine: DataflowEngine,
                                                         dataflow: DataflowServer) -> None:
    from beam_pipelines.runners.dataflow_api import JobLocation

    where = JobLocation(OTHER_PROJECT, OTHER_REGION, dataflow.endpoint)
    job_id = dataflow.add_job("pdo-clicks", JobState.RUNNING, OTHER_PROJECT, OTHER_REGION)
    handle = JobHandle(job_id, "pdo-clicks", location=where.text)
    with pytest.raises(ConflictError) as err:
        engine.update(handle, _request(version=2))  # the options name PROJECT/REGION now
    assert err.value.message == (
        f"cannot update Dataflow job {handle.job_id}: it runs in {where.text}, and "
        f"runner.options now name {dataflow.endpoint}/v1b3/projects/{PROJECT}/locations/"
        f"{REGION}; stop the pipeline and start it again to move it")
    assert dataflow.calls() == []


def test_a_handle_recorded_without_a_location_uses_the_environment_and_learns_it(
        dataflow: DataflowServer) -> None:
    """An old catalog row: the environment's project, region and endpoint (nothing else is
    needed to address a job), and a pause returns the handle with them."""
    job_id = dataflow.add_job("pdo-clicks", JobState.RUNNING, PROJECT, REGION)
    old_row = JobHandle(job_id, "pdo-clicks")
    env = {"PIPELINE_DO_DATAFLOW_PROJECT": PROJECT, "PIPELINE_DO_DATAFLOW_REGION": REGION,
           "PIPELINE_DO_DATAFLOW_ENDPOINT": dataflow.endpoint}
    engine = DataflowEngine(_Subscriptions(), env=env, timeout_s=10)

    assert engine.view(old_row).state == JobState.RUNNING
    paused = engine.pause(old_row)

    assert paused == replace(old_row, location=f"{dataflow.endpoint}/v1b3/projects/{PROJECT}/"
                                                f"locations/{REGION}")
    assert [(r.method, r.path) for r in dataflow.calls("PUT")] == [("PUT", f"{JOBS}/{job_id}")]
    with pytest.raises(DefinitionError) as err:
        DataflowEngine(_Subscriptions(), env={}).cancel(old_row)
    assert err.value.field == "runner.options.project"
    assert "PIPELINE_DO_DATAFLOW_PROJECT" in err.value.message


def test_a_location_is_the_api_resource_name_under_its_endpoint() -> None:
    from beam_pipelines.runners.dataflow_api import JobLocation

    google = JobLocation("my-project-123", "us-central1")
    assert google.text == "projects/my-project-123/locations/us-central1"
    local = JobLocation("p-12345", "europe-west4", "http://localhost:8080/")
    assert local.text == "http://localhost:8080/v1b3/projects/p-12345/locations/europe-west4"
    for where in (google, local):
        assert JobLocation.parse(where.text) == replace(
            where, endpoint=where.endpoint and where.endpoint.rstrip("/"))
    assert local.no_auth and not google.no_auth
    with pytest.raises(ValueError):
        JobLocation.parse("us-central1")


def test_an_unreadable_recorded_location_is_an_error_without_it(
        engine: DataflowEngine) -> None:
    handle = JobHandle("2026-01-01_00_00_00-1", "pdo-clicks", location="somewhere secret")
    with pytest.raises(PipelineDoError) as err:
        engine.view(handle)
    assert err.value.message == ("the recorded location of Dataflow job 2026-01-01_00_00_00-1 "
                                 "is unreadable; the server log has it")


# -- transform (update) ---------------------------------------------------------

def test_transform_updates_the_running_job_in_place(engine: DataflowEngine,
                                                    dataflow: DataflowServer,
                                                    gcs: GcsServer) -> None:
    old = engine.launch(_request())
    dataflow.clear()

    new = engine.update(old, _request("SELECT user FROM events", version=2))

    assert new.job_name == old.job_name and new.job_id != old.job_id
    # our check (get, bounded list), Beam's job_id_for_name (list), then the create
    assert [(r.method, r.path) for r in dataflow.calls()] == [
        ("GET", f"{JOBS}/{old.job_id}"), ("GET", JOBS), ("GET", JOBS), ("POST", JOBS)]
    assert dataflow.calls()[1].query["filter"] == ["ACTIVE"]
    create = dataflow.calls("POST")[0]
    assert create.job is not None
    assert create.job["replaceJobId"] == old.job_id
    assert create.job["transformNameMapping"] == {name: name for name in STAGE_NAMES}
    assert create.job["type"] == "JOB_TYPE_STREAMING" and create.job["name"] == "pdo-clicks"
    assert create.job["environment"]["sdkPipelineOptions"]["options"]["update"] is True
    assert engine.view(old).state == JobState.UPDATED
    proto, _ = _staged_pipeline(gcs, create)
    assert _top_level_names(proto) == list(STAGE_NAMES)


@pytest.mark.parametrize("case", ["drained", "unknown", "renamed"])
def test_update_without_a_running_job_fails_fast(engine: DataflowEngine,
                                                 dataflow: DataflowServer, case: str) -> None:
    """Beam 2.77's job_id_for_name would list jobs forever: the engine must refuse first."""
    if case == "drained":
        handle = JobHandle(dataflow.add_job("pdo-clicks", JobState.DRAINED, PROJECT, REGION),
                           "pdo-clicks")
    elif case == "unknown":
        handle = JobHandle("2026-01-01_00_00_00-404", "pdo-clicks")
    else:  # runs, but under another name than the handle's: Beam would not find it
        handle = JobHandle(dataflow.add_job("pdo-other", JobState.RUNNING, PROJECT, REGION),
                           "pdo-clicks")
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            engine.update(handle, _request(version=2))
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=60)  # a bound, not a timing assertion: a loop would never end
    assert not worker.is_alive(), "update did not return: Beam's job_id_for_name loop?"
    [error] = outcome
    assert isinstance(error, ConflictError)
    assert "cannot update" in error.message or "HTTP 404" in error.message
    assert dataflow.calls("POST") == []


# -- view ----------------------------------------------------------------------

def test_view_follows_the_states_the_service_reports(engine: DataflowEngine,
                                                     dataflow: DataflowServer) -> None:
    handle = engine.launch(_request())
    states = ["JOB_STATE_QUEUED", JobState.RUNNING, JobState.DRAINING, JobState.DRAINED]
    dataflow.script_states(handle.job_id, states)
    assert [engine.view(handle).state for _ in states] == [
        JobState.PENDING, JobState.RUNNING, JobState.DRAINING, JobState.DRAINED]

    dataflow.script_states(handle.job_id, [JobState.FAILED])
    dataflow.set_messages(handle.job_id, [
        {"id": "1", "messageImportance": "JOB_MESSAGE_ERROR", "messageText": "Workflow failed."}])
    view = engine.view(handle)
    assert (view.state, view.message) == (JobState.FAILED, "Workflow failed.")
    messages = dataflow.calls("GET", r"/messages$")[-1]
    assert messages.query["minimumImportance"] == ["JOB_MESSAGE_ERROR"]


def test_view_reports_committed_user_counters_of_the_pipeline(engine: DataflowEngine,
                                                              dataflow: DataflowServer) -> None:
    handle = engine.launch(_request())

    def counter(name: str, value: Any, step: str, namespace: str = "pipeline_do",
                tentative: bool = False) -> dict[str, Any]:
        context = {"namespace": namespace, "step": step, **({"tentative": "true"} if tentative
                                                            else {})}
        return {"name": {"origin": "user", "name": name, "context": context}, "scalar": value}

    dataflow.set_metrics(handle.job_id, [
        counter("events_out", "40", "s7"), counter("events_out", 2, "s9"),
        counter("events_out", "99", "s7", tentative=True), counter("bytes_out", "1024", "s9"),
        counter("events_out", 5, "s1", namespace="other"),
        {"name": {"origin": "dataflow/v1b3", "name": "ElementCount"}, "scalar": 7}])
    view = engine.view(handle)
    assert view.state == JobState.RUNNING
    assert dict(view.metrics) == {"events_out": 42.0, "bytes_out": 1024.0}  # no files_written
    [metrics] = dataflow.calls("GET", r"/metrics$")
    assert metrics.path == f"{JOBS}/{handle.job_id}/metrics"


def test_state_words_and_counters_mapping() -> None:
    assert job_state("JOB_STATE_RESOURCE_CLEANING_UP") == JobState.CANCELLING
    assert job_state("JOB_STATE_PAUSED") == JobState.UNKNOWN
    assert job_state(None) == JobState.UNKNOWN
    assert user_counters([]) == {}


# -- settings and errors ----------------------------------------------------------

def test_a_missing_setting_is_named_with_its_environment_variable() -> None:
    engine = DataflowEngine(_Subscriptions(), env={"PIPELINE_DO_DATAFLOW_REGION": REGION})
    with pytest.raises(DefinitionError) as err:
        engine.check({"temp_location": f"gs://{BUCKET}/tmp"})
    assert err.value.field == "runner.options.project"
    assert "PIPELINE_DO_DATAFLOW_PROJECT" in err.value.message
    assert err.value.details["missing"] == ["runner.options.project",
                                            "runner.options.staging_location",
                                            "runner.options.sdk_container_image"]

    engine.check({"project": PROJECT, "temp_location": f"gs://{BUCKET}/tmp",
                  "staging_location": f"gs://{BUCKET}/staging",
                  "sdk_container_image": IMAGE})  # options first, then env


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("temp_location", "/tmp/x", "gs://"),
    ("project", "Bad Project", "project id"),
    ("dataflow_endpoint", "http://dataflow.example.com", "https://"),
    ("max_num_workers", "0", ">= 1"),
])
def test_an_invalid_setting_is_named_with_what_is_allowed(key: str, value: str,
                                                          allowed: str) -> None:
    options = {"project": PROJECT, "region": REGION, "temp_location": f"gs://{BUCKET}/tmp",
               "staging_location": f"gs://{BUCKET}/staging", "sdk_container_image": IMAGE,
               key: value}
    with pytest.raises(DefinitionError) as err:
        DataflowEngine(_Subscriptions(), env={}).check(options)
    assert err.value.field == f"runner.options.{key}" and allowed in err.value.message


def test_an_unreachable_api_is_unavailable_without_internals() -> None:
    env = {"PIPELINE_DO_DATAFLOW_PROJECT": PROJECT, "PIPELINE_DO_DATAFLOW_REGION": REGION,
           "PIPELINE_DO_DATAFLOW_TEMP_LOCATION": f"gs://{BUCKET}/tmp",
           "PIPELINE_DO_DATAFLOW_STAGING_LOCATION": f"gs://{BUCKET}/staging",
           "PIPELINE_DO_DATAFLOW_SDK_CONTAINER_IMAGE": IMAGE,
           "PIPELINE_DO_DATAFLOW_ENDPOINT": f"http://localhost:{free_port()}"}
    engine = DataflowEngine(_Subscriptions(), env=env, timeout_s=2)
    with pytest.raises(Unavailable) as err:
        engine.view(JobHandle("2026-01-01_00_00_00-1", "pdo-clicks"))
    assert "did not answer" in err.value.message and "Traceback" not in err.value.message
