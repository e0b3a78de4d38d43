"""Settings: defaults, then environment variables, then the caller's overrides."""

from __future__ import annotations

import os
from typing import Any

from beam_pipelines.catalog.store import default_database_url
from beam_pipelines.sink_roots import LOCAL_SINK_ROOTS_ENV, parse_local_roots

__all__ = ["load_config"]

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    overrides = dict(overrides or {})
    data_dir = os.path.abspath(overrides.pop("DATA_DIR", None)
                               or os.environ.get("PIPELINE_DO_DATA_DIR") or "./data")
    config: dict[str, Any] = {
        "DATA_DIR": data_dir,
        "DATABASE_URL": os.environ.get("PIPELINE_DO_DATABASE_URL") or default_database_url(data_dir),
        "API_KEY": os.environ.get("PIPELINE_DO_API_KEY") or None,
        "RATE_LIMIT": _int_env("PIPELINE_DO_RATE_LIMIT", 1000),
        "MAX_CONTENT_LENGTH": _int_env("PIPELINE_DO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES,
                                       minimum=1),
        "DEFAULT_TIMEOUT_MS": 30_000,
        # Set by ``serve`` for its API workers: a job manager runs next to them,
        # and /healthz reports it broken (503) from its supervisor's heartbeat.
        "RUN_JOB_MANAGER": os.environ.get("PIPELINE_DO_RUN_JOB_MANAGER") == "1",
        "JOB_WORKERS": None,
        # Where local sinks may write besides <data dir>/lake.
        "LOCAL_SINK_ROOTS": _roots_env(),
        # Fernet key for sink secrets at rest; unset: <data dir>/secret.key.
        "SECRET_KEY": os.environ.get("PIPELINE_DO_SECRET_KEY") or None,
    }
    config.update(overrides)
    return config


def _roots_env() -> tuple[str, ...]:
    try:
        return parse_local_roots(os.environ.get(LOCAL_SINK_ROOTS_ENV))
    except ValueError as err:
        raise SystemExit(str(err)) from None


def _int_env(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value
