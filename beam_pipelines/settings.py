"""The data plane's settings from the environment: the one place it reads ``PIPELINE_DO_*``.

``serve`` reads its own settings once (``control_api.config``) and hands the
data plane what it needs as constructor arguments. The epoch worker
processes, spawned fresh, cannot be handed module state: they read the
variables they need here, once per process (``data_plane_settings()``), so
a change is one edit in one module. Nothing here imports the project but its errors.

The distributed engines' settings are a pipeline's ``runner.options.<key>``
first and a ``PIPELINE_DO_*`` variable second; ``engine_option`` and
``required_option`` resolve one, so both engines read them alike and refuse
a missing or malformed one in the same words.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from beam_pipelines.errors import DefinitionError

__all__ = ["DATAFLOW_ENV", "ENGINE_ENV_NAMES", "ENV_NAMES", "FLINK_ENV", "DataPlaneSettings",
           "data_plane_settings", "engine_option", "missing_setting", "required_option"]

EPOCH_MAX_ATTEMPTS_ENV = "PIPELINE_DO_EPOCH_MAX_ATTEMPTS"
EPOCH_MAX_TRANSIENT_ATTEMPTS_ENV = "PIPELINE_DO_EPOCH_MAX_TRANSIENT_ATTEMPTS"
STORAGE_RETRY_DEADLINE_ENV = "PIPELINE_DO_STORAGE_RETRY_DEADLINE"
SECRET_KEY_ENV = "PIPELINE_DO_SECRET_KEY"
LOCAL_SINK_ROOTS_ENV = "PIPELINE_DO_LOCAL_SINK_ROOTS"
DATAFLOW_PROJECT_ENV = "PIPELINE_DO_DATAFLOW_PROJECT"
KAFKA_BOOTSTRAP_ENV = "PIPELINE_DO_KAFKA_BOOTSTRAP"
MAX_BACKLOG_BYTES_ENV = "PIPELINE_DO_MAX_BACKLOG_BYTES"
MIN_FREE_DISK_BYTES_ENV = "PIPELINE_DO_MIN_FREE_DISK_BYTES"

#: The Dataflow engine's settings (``runners.dataflow_settings``): runner.options key →
#: the environment variable read when the definition does not give it.
DATAFLOW_ENV = {
    "project": DATAFLOW_PROJECT_ENV,
    "region": "PIPELINE_DO_DATAFLOW_REGION",
    "temp_location": "PIPELINE_DO_DATAFLOW_TEMP_LOCATION",
    "staging_location": "PIPELINE_DO_DATAFLOW_STAGING_LOCATION",
    "sdk_container_image": "PIPELINE_DO_DATAFLOW_SDK_CONTAINER_IMAGE",
    "dataflow_endpoint": "PIPELINE_DO_DATAFLOW_ENDPOINT",
    "service_account_email": "PIPELINE_DO_DATAFLOW_SERVICE_ACCOUNT_EMAIL",
    "subnetwork": "PIPELINE_DO_DATAFLOW_SUBNETWORK",
    "machine_type": "PIPELINE_DO_DATAFLOW_MACHINE_TYPE",
    "max_num_workers": "PIPELINE_DO_DATAFLOW_MAX_NUM_WORKERS",
    "flex_template": "PIPELINE_DO_DATAFLOW_FLEX_TEMPLATE",
}

#: The Flink engine's (``runners.flink_submit``), likewise.
FLINK_ENV = {
    "rest_url": "PIPELINE_DO_FLINK_REST_URL",
    "job_server_jar": "PIPELINE_DO_FLINK_JOB_SERVER_JAR",
    "savepoint_dir": "PIPELINE_DO_FLINK_SAVEPOINT_DIR",
    "kafka_bootstrap": KAFKA_BOOTSTRAP_ENV,
    "kafka_expansion_service": "PIPELINE_DO_KAFKA_EXPANSION_SERVICE",
    "job_endpoint": "PIPELINE_DO_FLINK_JOB_ENDPOINT",
}

#: The variables only the engines read, when a pipeline starts (the project and the
#: brokers are the transports' too, read here).
ENGINE_ENV_NAMES = tuple(name for name in (*DATAFLOW_ENV.values(), *FLINK_ENV.values())
                         if name not in (DATAFLOW_PROJECT_ENV, KAFKA_BOOTSTRAP_ENV))

#: Every variable this module reads, and the engines' (``ENGINE_ENV_NAMES``).
ENV_NAMES = (EPOCH_MAX_ATTEMPTS_ENV, EPOCH_MAX_TRANSIENT_ATTEMPTS_ENV, STORAGE_RETRY_DEADLINE_ENV,
             SECRET_KEY_ENV, LOCAL_SINK_ROOTS_ENV, DATAFLOW_PROJECT_ENV, KAFKA_BOOTSTRAP_ENV,
             MAX_BACKLOG_BYTES_ENV, MIN_FREE_DISK_BYTES_ENV, *ENGINE_ENV_NAMES)


@dataclass(frozen=True)
class DataPlaneSettings:
    #: Failed attempts of one epoch before its pipeline is ``failed``: a bad
    #: SQL or an unwritable sink fails the same way every time.
    epoch_max_attempts: int = 5
    #: A sink outage heals by itself and the buffer holds the events meanwhile,
    #: so it gets more: by default 10x ``epoch_max_attempts``.
    epoch_max_transient_attempts: int = 50
    #: Seconds a storage call is retried before its error is final.
    storage_retry_deadline: float = 10.0
    #: Fernet key sealing sink secrets at rest; None: the data dir's secret.key.
    secret_key: str | None = None
    #: Where local sinks may write besides <data dir>/lake, ``os.pathsep``-separated,
    #: as written (``beam_pipelines.storage.roots.parse_local_roots`` checks it).
    local_sink_roots: str = ""
    #: The project of distributed pipelines' Pub/Sub topics (the server's, not a definition's).
    dataflow_project: str | None = None
    #: The Kafka brokers of Flink pipelines' topics, ``host:port[,...]``.
    kafka_bootstrap: str | None = None
    #: A pipeline's uncommitted bytes in its buffer past which ingest answers
    #: 503 with Retry-After (a stopped sink must not fill the disk).
    max_backlog_bytes: int = 1 << 30
    #: Free disk space under which ingest answers 503 instead of failing writes.
    min_free_disk_bytes: int = 256 << 20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DataPlaneSettings:
        env = os.environ if environ is None else environ
        max_attempts = max(1, int(env.get(EPOCH_MAX_ATTEMPTS_ENV) or "5"))
        transient = max(max_attempts, int(env.get(EPOCH_MAX_TRANSIENT_ATTEMPTS_ENV)
                                          or str(10 * max_attempts)))
        return cls(epoch_max_attempts=max_attempts, epoch_max_transient_attempts=transient,
                   storage_retry_deadline=float(env.get(STORAGE_RETRY_DEADLINE_ENV) or "10"),
                   secret_key=env.get(SECRET_KEY_ENV) or None,
                   local_sink_roots=env.get(LOCAL_SINK_ROOTS_ENV, ""),
                   dataflow_project=env.get(DATAFLOW_PROJECT_ENV) or None,
                   kafka_bootstrap=env.get(KAFKA_BOOTSTRAP_ENV) or None,
                   max_backlog_bytes=int(env.get(MAX_BACKLOG_BYTES_ENV) or 1 << 30),
                   min_free_disk_bytes=int(env.get(MIN_FREE_DISK_BYTES_ENV) or 256 << 20))


@functools.cache
def data_plane_settings() -> DataPlaneSettings:
    """This process's settings, read from its environment on first use."""
    return DataPlaneSettings.from_env()


def engine_option(options: Mapping[str, Any], env: Mapping[str, str], key: str,
                  env_name: str | None = None, *, whole_number: bool = False) -> str | None:
    """``runner.options.<key>``, else ``env_name`` in ``env``: its text stripped, or None
    when neither gives one (a variable set to blanks is not set).

    An option that is given must be a non-empty string (or, ``whole_number``, an
    integer); a blank one is refused rather than read as "take the server's".
    """
    value = options.get(key)
    if value is None:
        found = env.get(env_name, "").strip() if env_name else ""
        return found or None
    if whole_number and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        allowed = "a non-empty string" + (" or a whole number" if whole_number else "")
        raise DefinitionError(f"runner.options.{key}", f"runner.options.{key} must be {allowed}")
    return value.strip()


def missing_setting(engine: str, key: str, env_name: str, what: str, *, alternative: str = "",
                    **details: Any) -> DefinitionError:
    """The refusal of a setting neither the definition nor the server gives: what it is,
    and both places to set it (``alternative``: another way, in parentheses)."""
    also = f" (or {alternative})" if alternative else ""
    return DefinitionError(f"runner.options.{key}", f"{engine} needs {what}: set "
                           f"runner.options.{key} or {env_name}{also}", **details)


def required_option(engine: str, options: Mapping[str, Any], env: Mapping[str, str], key: str,
                    env_name: str, what: str) -> str:
    """``engine_option`` that must be given (``missing_setting`` otherwise)."""
    value = engine_option(options, env, key, env_name)
    if value is None:
        raise missing_setting(engine, key, env_name, what)
    return value
