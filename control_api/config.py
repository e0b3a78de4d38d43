"""Settings: defaults, then environment variables, then the caller's overrides."""

from __future__ import annotations

import os
from typing import Any

from beam_pipelines.store import default_database_url

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
        "MAX_CONTENT_LENGTH": _int_env("PIPELINE_DO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        "DEFAULT_TIMEOUT_MS": 30_000,
        # Set by ``serve`` for its API workers: a job manager runs next to them,
        # and /healthz reports it broken (503) from its supervisor's heartbeat.
        "RUN_JOB_MANAGER": os.environ.get("PIPELINE_DO_RUN_JOB_MANAGER") == "1",
        "JOB_WORKERS": None,
    }
    config.update(overrides)
    return config


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
