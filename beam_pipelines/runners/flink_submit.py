"""How a pipeline becomes a Beam job on Flink: its settings, its pipeline options, the job server.

Pure functions, so what goes to Flink is tested for its exact words without
a job server: Beam's Flink job server (``beam-runners-flink-1.20-job-server``)
is a jar published only on Maven Central.

Two ways to reach the cluster, both through Beam's portable job API:

* ``job_server_jar``: Beam's ``FlinkRunner`` starts the jar itself for the
  submission (``--flink_job_server_jar``) and it submits to ``--flink_master``.
* ``job_endpoint``: a job server the operator runs beside the cluster
  (``job_server_command`` is its command line); ``PortableRunner`` submits
  to it. This is the one for a long-lived server: the job server outlives
  any one submission.

Beam's Flink options are the Java ``FlinkPipelineOptions`` the job server
describes to the SDK (``savepointPath`` → ``--savepoint_path``,
``allowNonRestoredState`` → ``--allow_non_restored_state``,
``checkpointingInterval`` → ``--checkpointing_interval``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from beam_pipelines.errors import DefinitionError
from beam_pipelines.settings import FLINK_ENV, engine_option, missing_setting, required_option

__all__ = ["FlinkSettings", "beam_pipeline_args", "job_server_command", "resolve_settings"]

# Each setting's environment variable is ``beam_pipelines.settings.FLINK_ENV``'s; rest_url,
# savepoint_dir and kafka_bootstrap are required, and job_server_jar unless job_endpoint is given.
_OPTIONAL_INT = {"parallelism": (1, 10_000), "checkpointing_interval_ms": (1_000, 86_400_000)}
_ENVIRONMENT_TYPES = ("DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK")
_FLINK_VERSIONS = ("1.19", "1.20")  # what Beam 2.77 publishes job servers for, of Flink 1.x


@dataclass(frozen=True)
class FlinkSettings:
    """A pipeline's Flink settings, resolved (runner.options first, then the environment)."""

    rest_url: str
    savepoint_dir: str
    kafka_bootstrap: str
    job_server_jar: str | None = None
    job_endpoint: str | None = None
    kafka_expansion_service: str | None = None
    flink_version: str = "1.20"
    parallelism: int | None = None
    checkpointing_interval_ms: int = 10_000
    environment_type: str | None = None
    environment_config: str | None = None

    @property
    def flink_master(self) -> str:
        """The REST address without its scheme, as Beam's ``--flink_master`` takes it."""
        return self.rest_url.split("://", 1)[-1].rstrip("/")


def resolve_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> FlinkSettings:
    """The settings, or a ``DefinitionError`` naming the missing/invalid one and where to set it."""
    def text(key: str) -> str | None:
        return engine_option(options, env, key, FLINK_ENV.get(key))

    def required(key: str, what: str) -> str:
        return required_option("Flink", options, env, key, FLINK_ENV[key], what)

    rest_url = required("rest_url", "the JobManager's REST URL (http://host:8081)")
    if not rest_url.startswith(("http://", "https://")):
        raise DefinitionError("runner.options.rest_url", "runner.options.rest_url must be an "
                              "http:// or https:// URL")
    savepoint_dir = required("savepoint_dir", "a savepoint directory every Flink node can "
                             "reach (s3://, gs://, hdfs:// or a shared file:// path)")
    kafka_bootstrap = required("kafka_bootstrap", "the Kafka bootstrap servers (host:port,...)")
    job_endpoint = text("job_endpoint")
    job_server_jar = text("job_server_jar")
    if job_endpoint is None and job_server_jar is None:
        raise missing_setting("Flink", "job_server_jar", FLINK_ENV["job_server_jar"],
                              "Beam's Flink job server",
                              alternative="runner.options.job_endpoint of a running job server")
    flink_version = str(options.get("flink_version", "1.20"))
    if flink_version not in _FLINK_VERSIONS:
        raise DefinitionError("runner.options.flink_version", f"unknown flink_version "
                              f"{flink_version!r}: allowed {', '.join(_FLINK_VERSIONS)}")
    ints: dict[str, int] = {}
    for key, (low, high) in _OPTIONAL_INT.items():
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DefinitionError(f"runner.options.{key}", f"runner.options.{key} must be an "
                                  f"integer from {low} to {high}")
        ints[key] = value
    environment_type = options.get("environment_type")
    if environment_type is not None and environment_type not in _ENVIRONMENT_TYPES:
        raise DefinitionError("runner.options.environment_type", f"unknown environment_type "
                              f"{environment_type!r}: allowed {', '.join(_ENVIRONMENT_TYPES)}")
    return FlinkSettings(
        rest_url=rest_url.rstrip("/"), savepoint_dir=savepoint_dir,
        kafka_bootstrap=kafka_bootstrap, job_server_jar=job_server_jar,
        job_endpoint=job_endpoint, kafka_expansion_service=text("kafka_expansion_service"),
        flink_version=flink_version, parallelism=ints.get("parallelism"),
        checkpointing_interval_ms=ints.get("checkpointing_interval_ms", 10_000),
        environment_type=environment_type, environment_config=text("environment_config"))


def beam_pipeline_args(settings: FlinkSettings, job_name: str, *, savepoint: str | None = None,
                       allow_non_restored_state: bool = False) -> list[str]:
    """The Beam pipeline options of one submission, in order.

    ``savepoint``: resume from it (a resume, or a transform's resubmission,
    where ``allow_non_restored_state`` lets state of a transform that no
    longer exists be dropped instead of failing the job).
    """
    if settings.job_endpoint:
        args = ["--runner=PortableRunner", f"--job_endpoint={settings.job_endpoint}"]
    else:
        args = ["--runner=FlinkRunner", f"--flink_master={settings.flink_master}",
                f"--flink_version={settings.flink_version}",
                f"--flink_job_server_jar={settings.job_server_jar}"]
    args += ["--streaming", f"--job_name={job_name}",
             f"--checkpointing_interval={settings.checkpointing_interval_ms}"]
    if settings.parallelism:
        args.append(f"--parallelism={settings.parallelism}")
    if settings.environment_type:
        args.append(f"--environment_type={settings.environment_type}")
    if settings.environment_config:
        args.append(f"--environment_config={settings.environment_config}")
    if savepoint:
        args.append(f"--savepoint_path={savepoint}")
        if allow_non_restored_state:
            args.append("--allow_non_restored_state")
    return args


def job_server_command(settings: FlinkSettings, *, job_port: int, artifact_port: int,
                       expansion_port: int, artifacts_dir: str, job_host: str = "127.0.0.1",
                       java: str = "java") -> list[str]:
    """The command line of a standalone Beam Flink job server for ``job_endpoint``.

    The same flags Beam's ``FlinkJarJobServer`` passes when it starts the jar
    itself (apache_beam/runners/portability/flink_runner.py).
    """
    if not settings.job_server_jar:
        raise missing_setting("a job server", "job_server_jar", FLINK_ENV["job_server_jar"],
                              "its jar")
    return [java, "-jar", settings.job_server_jar,
            "--flink-master", settings.flink_master,
            "--artifacts-dir", os.fspath(artifacts_dir),
            "--job-host", job_host,
            "--job-port", str(job_port),
            "--artifact-port", str(artifact_port),
            "--expansion-port", str(expansion_port)]
