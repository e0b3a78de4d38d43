"""The transforms' bounds from the environment: the one place ``transforms`` reads it.

Epoch workers and the isolated SQL child are fresh processes, and
``transforms`` imports nothing of the project above it, so these are read
here, once per process, at import: the SQL sandbox's budgets
(``transforms.sandbox``) and the JSON nesting limit (``transforms.json_depth``).

- ``PIPELINE_DO_SQL_MEMORY_MB`` (2048): the memory budget of one query.
- ``PIPELINE_DO_SQL_MAX_OUTPUT_MB`` (a quarter of it): the materialized result.
- ``PIPELINE_DO_SQL_TIMEOUT_SECONDS`` (300): an epoch's query is interrupted after it.
- ``PIPELINE_DO_DRY_RUN_TIMEOUT_SECONDS`` (30): a plan or dry run in the API.
- ``PIPELINE_DO_SQL_THREADS`` (DuckDB's default, one per core).
- ``PIPELINE_DO_MAX_JSON_DEPTH`` (64, clamped to 1..512).
"""

from __future__ import annotations

import os

__all__ = ["DRY_RUN_TIMEOUT_SECONDS", "ENV_NAMES", "MAX_JSON_DEPTH", "SQL_MAX_OUTPUT_MB",
           "SQL_MEMORY_MB", "SQL_THREADS", "SQL_TIMEOUT_SECONDS"]

#: Every variable this module reads.
ENV_NAMES = ("PIPELINE_DO_SQL_MEMORY_MB", "PIPELINE_DO_SQL_MAX_OUTPUT_MB",
             "PIPELINE_DO_SQL_TIMEOUT_SECONDS", "PIPELINE_DO_DRY_RUN_TIMEOUT_SECONDS",
             "PIPELINE_DO_SQL_THREADS", "PIPELINE_DO_MAX_JSON_DEPTH")


def _positive_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a positive number, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{name} must be a positive number, got {raw!r}")
    return value


SQL_MEMORY_MB = int(_positive_env("PIPELINE_DO_SQL_MEMORY_MB", 2048))
SQL_MAX_OUTPUT_MB = int(_positive_env("PIPELINE_DO_SQL_MAX_OUTPUT_MB", max(SQL_MEMORY_MB // 4, 1)))
SQL_TIMEOUT_SECONDS = _positive_env("PIPELINE_DO_SQL_TIMEOUT_SECONDS", 300.0)
DRY_RUN_TIMEOUT_SECONDS = _positive_env("PIPELINE_DO_DRY_RUN_TIMEOUT_SECONDS", 30.0)
SQL_THREADS = int(_positive_env("PIPELINE_DO_SQL_THREADS", 1)) \
    if os.environ.get("PIPELINE_DO_SQL_THREADS") else None  # None: DuckDB's default
# Clamped to 1..512: deeper than that, the parsers this guards would recurse too far.
MAX_JSON_DEPTH = min(max(int(os.environ.get("PIPELINE_DO_MAX_JSON_DEPTH", "64")), 1), 512)
