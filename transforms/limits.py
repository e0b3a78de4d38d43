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

With them, what applies the memory budget and words its refusal
(``limit_process_memory``, ``duckdb_memory_limit``, ``memory_budget_error``).
This module imports no DuckDB: the API and the job manager import it, and
neither runs user SQL in its own process.
"""

from __future__ import annotations

import os
import resource

from transforms.sql_policy import SqlError

__all__ = ["DRY_RUN_TIMEOUT_SECONDS", "ENV_NAMES", "MAX_JSON_DEPTH", "SQL_MAX_OUTPUT_MB",
           "SQL_MEMORY_MB", "SQL_THREADS", "SQL_TIMEOUT_SECONDS", "duckdb_memory_limit",
           "limit_process_memory", "memory_budget_error"]

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


def duckdb_memory_limit(budget_mb: int) -> str:
    """DuckDB's share of a budget: half, the rest for what it allocates outside it."""
    return f"{max(budget_mb // 2, 16)}MB"


def limit_process_memory(budget_mb: int | None = None) -> int:
    """Cap this process's data segment at what it uses now plus ``budget_mb``.

    ``RLIMIT_DATA`` counts the heap and private writable mappings (what
    DuckDB, Arrow and Python allocate), not reserved address space, so it
    holds for the whole process whatever allocates. Past it, allocations
    fail: DuckDB raises an out-of-memory error, pyarrow ``ArrowMemoryError``,
    Python a ``MemoryError``, instead of the kernel's OOM killer taking this
    or another process. Not ``RLIMIT_AS``: measured here, an epoch worker maps
    2.7 GB of address space (VmSize) for 1.5 GB of private writable memory
    (VmData) and an RSS of 0.3-0.4 GB, and a bare Python with DuckDB already
    reserves ~1 GB; that difference would have to be guessed into the cap.
    Call it once, early, in a process that runs user SQL (the dry-run child,
    an epoch worker's initializer); it returns the limit in bytes.
    """
    budget = (budget_mb or SQL_MEMORY_MB) << 20
    limit = _data_segment_bytes() + budget
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def _data_segment_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_budget_error(budget_mb: int) -> SqlError:
    """The one wording of "out of memory", wherever the budget ran out."""
    return SqlError(f"the SQL ran out of its {budget_mb} MB memory budget "
                    "(PIPELINE_DO_SQL_MEMORY_MB)", "memory_limit")
