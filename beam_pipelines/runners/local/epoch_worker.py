"""What an epoch worker process runs: its initializer and its two task entries.

The job manager (:mod:`.scheduler`) hands these to its pool
(:mod:`.workers`, whose child loop is :mod:`.worker_process`). The pool
pickles them by qualified name, so a spawned worker imports this module and
what it needs to run an epoch (the epoch protocol, the store, pyarrow, the
memory cap), not the scheduler, its replay scheduler, release thread and
upgrade. A worker keeps one store and one cache of compiled epoch plans for
all its epochs, live and replay, and hands the memory an epoch freed back to
the system after each.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pyarrow as pa

from beam_pipelines.catalog.store import Store
from beam_pipelines.runners.local.epochs import EpochResult, run_epoch
from transforms.limits import SQL_MEMORY_MB, limit_process_memory

if TYPE_CHECKING:  # Beam is imported in the workers only (init_worker)
    from beam_pipelines.runners.local.plan_cache import PlanCache

__all__ = ["WORKER_HEADROOM_MB", "WORKER_MEMORY_MB", "init_worker", "run_epoch_in_worker",
           "run_replay_epoch_in_worker"]

_worker_store: Store | None = None
_worker_plans: PlanCache | None = None  # the worker process's compiled epoch plans

# A worker's memory cap (``RLIMIT_DATA``, see ``limit_process_memory``): what the
# worker uses before Beam is imported, plus DuckDB's share for one epoch's SQL and
# room for the rest. Measured after 1M-event epochs: VmData 1.5-1.7 GB at an RSS
# peak of 0.42 GB, 1 GiB of it the arena pyarrow's mimalloc reserves and never
# touches. 2 GB of headroom keeps that and an epoch's batches (roll.max_bytes,
# 64 MB by default, a few times over) clear of the cap.
WORKER_HEADROOM_MB = 2048
WORKER_MEMORY_MB = SQL_MEMORY_MB + WORKER_HEADROOM_MB


def run_epoch_in_worker(database_url: str, data_dir: str, pipeline_id: str,
                        epoch_no: int, predecessor_timeout: float = 0.0) -> EpochResult:
    try:
        return run_epoch(_store_of_worker(database_url), data_dir, pipeline_id, epoch_no,
                         release=False, predecessor_timeout=predecessor_timeout,
                         plans=_worker_plans)
    finally:
        _release_free_memory()


def run_replay_epoch_in_worker(database_url: str, data_dir: str, replay_id: str,
                               epoch_no: int) -> EpochResult:
    """A worker's entry for one replay epoch: the live epochs' store, plans and release."""
    from beam_pipelines.runners.local.replays import run_replay_epoch

    try:
        return run_replay_epoch(_store_of_worker(database_url), data_dir, replay_id, epoch_no,
                                plans=_worker_plans)
    finally:
        _release_free_memory()


def _store_of_worker(database_url: str) -> Store:
    global _worker_store
    if _worker_store is None or _worker_store.url != database_url:
        _worker_store = Store(database_url)
    return _worker_store


def _release_free_memory() -> None:
    """Hand the memory an epoch freed back to the system before the next one.

    pyarrow's allocator (mimalloc) keeps freed pages for reuse: after a
    400k-event epoch of the make bench workload a worker stayed at ~375 MB
    RSS, ~85 MB above what it held, and its next epoch peaked ~30 MB higher
    than after a release (benchmarks/README.md, "perf2"). Idle workers and
    the stop's parallel flush, where every worker peaks at once, start lower.
    """
    pa.default_memory_pool().release_unused()


def init_worker(memory_mb: int) -> None:
    """Epoch workers are background work: ingest acks, which clients wait for,
    win the CPU when both want it. Cap the worker's memory, then import Beam
    and every filesystem before the first epoch needs them (~2-3 s); the pool
    starts every worker at once, so this happens early."""
    os.nice(5)
    limit_process_memory(memory_mb)
    global _worker_plans
    import apache_beam.io.filesystems  # noqa: F401  (registers gs://, s3:// on import)

    from beam_pipelines.runners.local.plan_cache import PlanCache

    _worker_plans = PlanCache()
