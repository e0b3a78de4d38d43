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
MAX_BACKLOG_BYTES_ENV = "PIPELINE_DO_MAX_BACKLOG_BYTES"
MIN_FREE_DISK_BYTES_ENV = "PIPELINE_DO_MIN_FREE_DISK_BYTES"

#: Every variable this module reads.
ENV_NAMES = (EPOCH_MAX_ATTEMPTS_ENV, EPOCH_MAX_TRANSIENT_ATTEMPTS_ENV, STORAGE_RETRY_DEADLINE_ENV,
             SECRET_KEY_ENV, LOCAL_SINK_ROOTS_ENV, MAX_BACKLOG_BYTES_ENV, MIN_FREE_DISK_BYTES_ENV)


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
                   max_backlog_bytes=int(env.get(MAX_BACKLOG_BYTES_ENV) or 1 << 30),
                   min_free_disk_bytes=int(env.get(MIN_FREE_DISK_BYTES_ENV) or 256 << 20))


@functools.cache
def data_plane_settings() -> DataPlaneSettings:
    """This process's settings, read from its environment on first use."""
    return DataPlaneSettings.from_env()
