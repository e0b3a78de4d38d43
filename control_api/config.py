"""Settings: defaults, then environment variables, then the caller's overrides.

Every ``PIPELINE_DO_*`` variable of the server is read here, once, into a
frozen :class:`Settings` that the app factory and ``serve`` use; the data
plane gets its part as constructor arguments. Two modules below read the
environment themselves, because the epoch worker processes they run in are
started fresh and import nothing of ``control_api``:
``beam_pipelines.settings`` (attempt budgets, storage retry deadline, secret
key, local sink roots; read here through it, so each variable has one parser)
and ``transforms.limits`` (SQL budgets, JSON depth). :data:`ENV_NAMES` lists
every variable the server reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from beam_pipelines.catalog.store import default_database_url
from beam_pipelines.settings import ENV_NAMES as DATA_PLANE_ENV_NAMES
from beam_pipelines.settings import DataPlaneSettings
from beam_pipelines.storage.roots import parse_local_roots
from transforms.limits import ENV_NAMES as TRANSFORMS_ENV_NAMES

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ENV_NAMES", "Settings", "load_settings"]

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024

#: The variables read in this module.
CONTROL_ENV_NAMES = (
    "PIPELINE_DO_DATA_DIR", "PIPELINE_DO_DATABASE_URL", "PIPELINE_DO_API_KEY",
    "PIPELINE_DO_RATE_LIMIT", "PIPELINE_DO_MAX_BODY_BYTES", "PIPELINE_DO_RUN_JOB_MANAGER",
    "PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE", "PIPELINE_DO_WEBHOOK_RETRY_SECONDS",
    "PIPELINE_DO_WEBHOOK_INGESTED_INTERVAL",
)
#: Every ``PIPELINE_DO_*`` variable the server reads. The client CLI's
#: ``PIPELINE_DO_URL`` (and its own use of ``PIPELINE_DO_API_KEY``) belong to
#: the client, a separate program: ``control_api.client`` reads them.
ENV_NAMES = CONTROL_ENV_NAMES + DATA_PLANE_ENV_NAMES + TRANSFORMS_ENV_NAMES


@dataclass(frozen=True)
class Settings:
    data_dir: str
    database_url: str
    #: An admin key registered at start; None: ``serve`` makes one on first start.
    api_key: str | None = None
    #: Requests per second per key; 0: no limit.
    rate_limit: int = 1000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    default_timeout_ms: int = 30_000
    #: Set by ``serve`` for its API workers: a job manager runs next to them,
    #: and /healthz reports it broken (503) from its supervisor's heartbeat.
    run_job_manager: bool = False
    #: Where local sinks may write besides <data dir>/lake.
    local_sink_roots: tuple[str, ...] = ()
    #: Fernet key for sink secrets at rest; None: <data dir>/secret.key.
    secret_key: str | None = None
    #: Webhook URLs may resolve to private, loopback or reserved addresses.
    webhook_allow_private: bool = False
    webhook_retry_seconds: float = 1.0
    webhook_ingested_interval: float = 10.0
    #: What the data plane reads for itself (the job manager's attempt budgets).
    data_plane: DataPlaneSettings = field(default_factory=DataPlaneSettings)

    def flask_config(self) -> dict[str, Any]:
        """The keys Flask itself reads (``MAX_CONTENT_LENGTH``) and the upper-case
        names overrides are given by, for tools that read ``app.config``."""
        return {name.upper(): getattr(self, name) for name in _OVERRIDABLE} \
            | {"MAX_CONTENT_LENGTH": self.max_body_bytes}


# Override names are the upper-case field names ("DATA_DIR", "RATE_LIMIT", ...).
_OVERRIDABLE = tuple(f.name for f in fields(Settings) if f.name != "data_plane")


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``environ`` (default ``os.environ``) and ``overrides``,
    given by upper-case field name; SystemExit naming a malformed variable."""
    env = os.environ if environ is None else environ
    given = {key.lower(): value for key, value in (overrides or {}).items()
             if key.lower() in _OVERRIDABLE}
    if "MAX_CONTENT_LENGTH" in (overrides or {}):
        given.setdefault("max_body_bytes", overrides["MAX_CONTENT_LENGTH"])  # type: ignore[index]
    data_dir = os.path.abspath(given.pop("data_dir", None) or env.get("PIPELINE_DO_DATA_DIR")
                               or "./data")
    try:
        data_plane = DataPlaneSettings.from_env(env)
    except ValueError as err:
        raise SystemExit(f"malformed setting: {err}") from None
    settings = Settings(
        data_dir=data_dir,
        database_url=env.get("PIPELINE_DO_DATABASE_URL") or default_database_url(data_dir),
        api_key=env.get("PIPELINE_DO_API_KEY") or None,
        rate_limit=_int_env(env, "PIPELINE_DO_RATE_LIMIT", 1000),
        max_body_bytes=_int_env(env, "PIPELINE_DO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES,
                                minimum=1),
        run_job_manager=env.get("PIPELINE_DO_RUN_JOB_MANAGER") == "1",
        local_sink_roots=_roots(data_plane.local_sink_roots),
        secret_key=data_plane.secret_key,
        webhook_allow_private=env.get("PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE", "").lower()
        in ("1", "true", "yes"),
        webhook_retry_seconds=_float_env(env, "PIPELINE_DO_WEBHOOK_RETRY_SECONDS", 1.0),
        webhook_ingested_interval=_float_env(env, "PIPELINE_DO_WEBHOOK_INGESTED_INTERVAL", 10.0),
        data_plane=data_plane,
    )
    return replace(settings, **given)


def _roots(raw: str) -> tuple[str, ...]:
    try:
        return parse_local_roots(raw)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def _int_env(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
