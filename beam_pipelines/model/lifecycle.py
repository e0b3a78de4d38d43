"""A pipeline's lifecycle: every status, and every move between two of them, in one table.

    created → running ⇄ paused;  created/running/paused → stopping → stopped → running;
    running/stopping → failed → running (resume, start) or stopping (stop)

``created``   defined, ingest buffers; nothing is written.
``running``   the job manager runs the pipeline's epochs as they come due.
``paused``    no epoch is planned; ingest keeps buffering.
``stopping``  the job manager flushes every buffered event, then marks it
              ``stopped``. A ``stop`` whose caller timed out (or a sink outage)
              leaves it here: ``stop`` again waits again, ``resume``/``start``
              take it back to ``running`` without the flush.
``stopped``   every event accepted before the stop is written.
``failed``    one epoch failed ``PIPELINE_DO_EPOCH_MAX_ATTEMPTS`` times (a sink
              outage gets a larger budget, see ``beam_pipelines.runners.local.scheduler``);
              ``last_error`` says why and the job manager no longer runs it.
              After a fix (``transform``: the failed epoch is retried with the
              *current* SQL), ``resume`` or ``start`` runs it again with a fresh
              budget; ``stop`` flushes (``stopping``), ``delete`` deletes.

``OPERATIONS`` are the user's (``PipelineService.transition``);
``MANAGER_MOVES`` are the job manager's. Nothing else changes a status.
Ingest is accepted in every status; ``delete`` works from every status.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["MANAGER_MOVES", "OPERATIONS", "SCHEDULED", "STATUSES", "Status"]


class Status(StrEnum):
    """A pipeline's status; a ``str``, so the store keeps and compares its value."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


STATUSES: tuple[str, ...] = tuple(status.value for status in Status)

# operation → (allowed from, to)
OPERATIONS: dict[str, tuple[tuple[Status, ...], Status]] = {
    "start": ((Status.CREATED, Status.STOPPED, Status.STOPPING, Status.FAILED), Status.RUNNING),
    "pause": ((Status.RUNNING,), Status.PAUSED),
    "resume": ((Status.PAUSED, Status.STOPPING, Status.FAILED), Status.RUNNING),
    # From stopping: the same flush, waited for again.
    "stop": ((Status.CREATED, Status.RUNNING, Status.PAUSED, Status.STOPPING, Status.FAILED),
             Status.STOPPING),
}

# The job manager's moves: flushed (the stop's flush is done), fail (an epoch
# used up its attempts).
MANAGER_MOVES: dict[str, tuple[tuple[Status, ...], Status]] = {
    "flushed": ((Status.STOPPING,), Status.STOPPED),
    "fail": ((Status.RUNNING, Status.STOPPING), Status.FAILED),
}

# The statuses whose epochs the job manager runs.
SCHEDULED: tuple[Status, ...] = (Status.RUNNING, Status.STOPPING)

assert {s for moves in (OPERATIONS, MANAGER_MOVES) for froms, to in moves.values()
        for s in (*froms, to)} == set(Status)
