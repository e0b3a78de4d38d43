"""What FlinkEngine sends without a cluster: its settings, the Beam submission's options,
the job server's command line, Flink's states in JobState's words, and its errors.

The Beam job itself cannot be submitted here (Beam's Flink job server is on
Maven Central only); these pin what a real cluster would get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)

from beam_pipelines.errors import DefinitionError, Unavailable
from beam_pipelines.runners.base import JobHandle, JobState
from beam_pipelines.runners.flink import FlinkEngine
from beam_pipelines.runners.flink_rest import FlinkRest, flink_state_to_job_state
from beam_pipelines.runners.flink_submit import (
    beam_pipeline_args,
    job_server_command,
    resolve_settings,
)
from tests.servers import free_port

ENV = {"PIPELINE_DO_FLINK_REST_URL": "http://flink-jm:8081/",
       "PIPELINE_DO_FLINK_JOB_SERVER_JAR": "/opt/beam/beam-runners-flink-1.20-job-server.jar",
       "PIPELINE_DO_FLINK_SAVEPOINT_DIR": "s3://bucket/savepoints",
       "PIPELINE_DO_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092"}


class NoTransport:
    def ensure(self, pipeline_id: str) -> None: ...

    def publish(self, pipeline_id: str, data: bytes, attributes: Any, timeout_s: float) -> None: ...

    def remove(self, pipeline_id: str) -> None: ...


# -- settings ------------------------------------------------------------------

def test_settings_come_from_the_environment_when_the_definition_names_none() -> None:
    settings = resolve_settings({}, ENV)

    assert settings.rest_url == "http://flink-jm:8081"
    assert settings.flink_master == "flink-jm:8081"
    assert settings.job_server_jar == ENV["PIPELINE_DO_FLINK_JOB_SERVER_JAR"]
    assert settings.savepoint_dir == "s3://bucket/savepoints"
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert (settings.flink_version, settings.checkpointing_interval_ms) == ("1.20", 10_000)


def test_runner_options_come_before_the_environment() -> None:
    settings = resolve_settings({"rest_url": "https://other:443", "kafka_bootstrap": "k:1",
                                 "parallelism": 4, "flink_version": "1.19"}, ENV)

    assert (settings.rest_url, settings.kafka_bootstrap) == ("https://other:443", "k:1")
    assert (settings.parallelism, settings.flink_version) == (4, "1.19")


@pytest.mark.parametrize(("key", "env_var"), [
    ("rest_url", "PIPELINE_DO_FLINK_REST_URL"),
    ("savepoint_dir", "PIPELINE_DO_FLINK_SAVEPOINT_DIR"),
    ("kafka_bootstrap", "PIPELINE_DO_KAFKA_BOOTSTRAP"),
    ("job_server_jar", "PIPELINE_DO_FLINK_JOB_SERVER_JAR"),
])
def test_a_missing_setting_names_the_option_and_the_variable(key: str, env_var: str) -> None:
    env = {k: v for k, v in ENV.items() if k != env_var}

    with pytest.raises(DefinitionError) as caught:
        FlinkEngine(NoTransport(), env=env).check({})

    assert caught.value.field == f"runner.options.{key}"
    assert f"runner.options.{key}" in caught.value.message and env_var in caught.value.message


def test_a_job_endpoint_replaces_the_jar() -> None:
    env = {k: v for k, v in ENV.items() if k != "PIPELINE_DO_FLINK_JOB_SERVER_JAR"}

    settings = resolve_settings({"job_endpoint": "jobserver:8099"}, env)

    assert settings.job_server_jar is None and settings.job_endpoint == "jobserver:8099"


@pytest.mark.parametrize(("options", "field", "words"), [
    ({"rest_url": "flink-jm:8081"}, "runner.options.rest_url", "http:// or https://"),
    ({"rest_url": ""}, "runner.options.rest_url", "non-empty string"),
    ({"flink_version": "1.17"}, "runner.options.flink_version", "allowed 1.19, 1.20"),
    ({"parallelism": 0}, "runner.options.parallelism", "integer from 1 to 10000"),
    ({"parallelism": True}, "runner.options.parallelism", "integer from 1 to 10000"),
    ({"checkpointing_interval_ms": 10}, "runner.options.checkpointing_interval_ms", "from 1000"),
    ({"environment_type": "K8S"}, "runner.options.environment_type",
     "allowed DOCKER, PROCESS, EXTERNAL, LOOPBACK"),
])
def test_an_invalid_setting_is_refused_by_name(options: dict[str, Any], field: str,
                                               words: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        resolve_settings(options, ENV)

    assert caught.value.field == field and words in caught.value.message


def test_a_job_server_jar_that_is_not_on_this_server_is_refused(tmp_path: Path) -> None:
    engine = FlinkEngine(NoTransport(), env=ENV)
    with pytest.raises(DefinitionError) as caught:
        engine.check({})
    assert caught.value.field == "runner.options.job_server_jar"
    assert "not a file on this server" in caught.value.message

    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"jar")
    engine.check({"job_server_jar": str(jar)})
    engine.check({"job_server_jar": "https://repo.example/job-server.jar"})  # Beam downloads it


# -- the Beam submission ------------------------------------------------------------

def test_a_fresh_submission_runs_the_flink_runner_streaming_under_the_job_name() -> None:
    args = beam_pipeline_args(resolve_settings({}, ENV), "pipeline-do-pl-1")

    assert args == ["--runner=FlinkRunner", "--flink_master=flink-jm:8081", "--flink_version=1.20",
                    f"--flink_job_server_jar={ENV['PIPELINE_DO_FLINK_JOB_SERVER_JAR']}",
                    "--streaming", "--job_name=pipeline-do-pl-1", "--checkpointing_interval=10000"]
    options = PipelineOptions(args)
    flink = options.view_as(FlinkRunnerOptions)
    assert (flink.flink_master, flink.flink_version) == ("flink-jm:8081", "1.20")
    assert flink.flink_job_server_jar == ENV["PIPELINE_DO_FLINK_JOB_SERVER_JAR"]
    assert options.view_as(StandardOptions).streaming is True
    assert options.view_as(StandardOptions).runner == "FlinkRunner"


def test_a_resume_names_the_savepoint_and_an_update_allows_dropped_state() -> None:
    settings = resolve_settings({"parallelism": 2, "environment_type": "EXTERNAL",
                                 "environment_config": "localhost:50000"}, ENV)

    resume = beam_pipeline_args(settings, "j", savepoint="s3://bucket/savepoints/j/savepoint-1")
    update = beam_pipeline_args(settings, "j", savepoint="s3://b/sp", allow_non_restored_state=True)

    assert resume[-4:] == ["--parallelism=2", "--environment_type=EXTERNAL",
                           "--environment_config=localhost:50000",
                           "--savepoint_path=s3://bucket/savepoints/j/savepoint-1"]
    assert "--allow_non_restored_state" not in resume
    assert update[-2:] == ["--savepoint_path=s3://b/sp", "--allow_non_restored_state"]
    # The Flink job server describes these (FlinkPipelineOptions' savepointPath,
    # allowNonRestoredState); the SDK keeps them for it as options it does not know itself.
    kept = PipelineOptions(update).get_all_options(retain_unknown_options=True)
    assert kept["savepoint_path"] == "s3://b/sp"
    assert PipelineOptions(resume).view_as(PortableOptions).environment_type == "EXTERNAL"


def test_a_running_job_server_is_reached_through_the_portable_runner() -> None:
    settings = resolve_settings({"job_endpoint": "jobserver:8099"}, ENV)

    args = beam_pipeline_args(settings, "j")

    assert args[:2] == ["--runner=PortableRunner", "--job_endpoint=jobserver:8099"]
    assert not any(a.startswith(("--flink_master", "--flink_job_server_jar")) for a in args)
    assert PipelineOptions(args).view_as(PortableOptions).job_endpoint == "jobserver:8099"


def test_the_job_server_command_line() -> None:
    settings = resolve_settings({}, ENV)

    command = job_server_command(settings, job_port=8099, artifact_port=8098,
                                 expansion_port=8097, artifacts_dir="/var/beam/artifacts")

    assert command == ["java", "-jar", ENV["PIPELINE_DO_FLINK_JOB_SERVER_JAR"],
                       "--flink-master", "flink-jm:8081",
                       "--artifacts-dir", "/var/beam/artifacts",
                       "--job-host", "127.0.0.1",
                       "--job-port", "8099", "--artifact-port", "8098",
                       "--expansion-port", "8097"]


# -- states and errors ------------------------------------------------------------------

def test_flink_states_in_job_state_words() -> None:
    expected = {
        "INITIALIZING": JobState.PENDING, "CREATED": JobState.PENDING,
        "RECONCILING": JobState.PENDING, "RESTARTING": JobState.PENDING,
        "SUSPENDED": JobState.PENDING, "RUNNING": JobState.RUNNING,
        "FAILING": JobState.FAILED, "FAILED": JobState.FAILED,
        "CANCELLING": JobState.CANCELLING, "CANCELED": JobState.CANCELLED,
        "FINISHED": JobState.DRAINED, "SOMETHING_NEW": JobState.UNKNOWN,
    }

    assert {state: flink_state_to_job_state(state) for state in expected} == expected


def test_a_cluster_that_does_not_answer_is_unavailable_without_internals() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    engine = FlinkEngine(NoTransport(), env={"PIPELINE_DO_FLINK_REST_URL": url}, timeout_s=2)

    with pytest.raises(Unavailable) as caught:
        engine.view(JobHandle(job_id="a" * 32, job_name="j"))

    assert caught.value.transient
    assert str(caught.value) == f"could not read the job: the Flink cluster at {url} did not answer"
    with pytest.raises(Unavailable):
        FlinkRest(url, timeout_s=2).jobs()


def test_calls_after_launch_need_a_rest_url_from_somewhere() -> None:
    engine = FlinkEngine(NoTransport(), env={})

    with pytest.raises(DefinitionError) as caught:
        engine.cancel(JobHandle(job_id="a" * 32, job_name="j"))

    assert caught.value.field == "runner.options.rest_url"
    assert "PIPELINE_DO_FLINK_REST_URL" in caught.value.message


def test_a_handle_that_names_its_cluster_is_not_sent_to_the_environment_s() -> None:
    from beam_pipelines.errors import PipelineDoError
    from beam_pipelines.runners.flink import cluster_location

    recorded = f"http://127.0.0.1:{free_port()}"
    engine = FlinkEngine(NoTransport(), env={"PIPELINE_DO_FLINK_REST_URL": "http://flink.invalid"},
                         timeout_s=2)

    with pytest.raises(Unavailable) as caught:
        engine.view(JobHandle(job_id="a" * 32, job_name="j",
                              location=cluster_location(recorded, None)))

    assert str(caught.value) == (f"could not read the job: the Flink cluster at {recorded} did "
                                 "not answer")
    with pytest.raises(PipelineDoError) as unreadable:
        engine.cancel(JobHandle(job_id="a" * 32, job_name="j", location="not json"))
    assert str(unreadable.value) == (f"the recorded location of Flink job {'a' * 32} is "
                                     "unreadable; the server log has it")
