"""The data plane's settings from the environment: the one place it reads ``PIPELINE_DO_*``.

``serve`` reads its own settings once (``control_api.config``) and hands the
data plane what it needs as constructor arguments. The epoch worker
processes, spawned fresh, cannot be handed module state: they read the
variables they need here, once per process (``data_plane_settings()``), so
a change is one edit in one module. Nothing here imports the project.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ENV_NAMES", "DataPlaneSettings", "data_plane_settings"]

EPOCH_MAX_ATTEMPTS_ENV = "PIPELINE_DO_EPOCH_MAX_ATTEMPTS"
EPOCH_MAX_TRANSIENT_ATTEMPTS_ENV = "PIPELINE_DO_EPOCH_MAX_TRANSIENT_ATTEMPTS"
STORAGE_RETRY_DEADLINE_ENV = "PIPELINE_DO_STORAGE_RETRY_DEADLINE"
SECRET_KEY_ENV = "PIPELINE_DO_SECRET_KEY"
LOCAL_SINK_ROOTS_ENV = "PIPELINE_DO_LOCAL_SINK_ROOTS"
DATAFLOW_PROJECT_ENV = "PIPELINE_DO_DATAFLOW_PROJECT"
KAFKA_BOOTSTRAP_ENV = "PIPELINE_DO_KAFKA_BOOTSTRAP"
MAX_BACKLOG_BYTES_ENV = "PIPELINE_DO_MAX_BACKLOG_BYTES"
MIN_FREE_DISK_BYTES_ENV = "PIPELINE_DO_MIN_FREE_DISK_BYTES"

#: The distributed engines' settings: each is a pipeline's ``runner.options.<key>``
#: first, and this variable of the server's environment second, read by the engine
#: (``runners.dataflow_settings``, ``runners.flink_submit``) when the pipeline starts.
ENGINE_ENV_NAMES = (
    "PIPELINE_DO_DATAFLOW_REGION", "PIPELINE_DO_DATAFLOW_TEMP_LOCATION",
    "PIPELINE_DO_DATAFLOW_STAGING_LOCATION", "PIPELINE_DO_DATAFLOW_SDK_CONTAINER_IMAGE",
    "PIPELINE_DO_DATAFLOW_ENDPOINT", "PIPELINE_DO_DATAFLOW_SERVICE_ACCOUNT_EMAIL",
    "PIPELINE_DO_DATAFLOW_SUBNETWORK", "PIPELINE_DO_DATAFLOW_MACHINE_TYPE",
    "PIPELINE_DO_DATAFLOW_MAX_NUM_WORKERS", "PIPELINE_DO_DATAFLOW_FLEX_TEMPLATE",
    "PIPELINE_DO_FLINK_REST_URL", "PIPELINE_DO_FLINK_JOB_SERVER_JAR",
    "PIPELINE_DO_FLINK_SAVEPOINT_DIR", "PIPELINE_DO_FLINK_JOB_ENDPOINT",
    "PIPELINE_DO_KAFKA_EXPANSION_SERVICE",
)

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
