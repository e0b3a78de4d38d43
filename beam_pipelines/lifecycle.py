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

__all__ = ["MANAGER_MOVES", "OPERATIONS", "SCHEDULED", "STATUSES"]

STATUSES: tuple[str, ...] = ("created", "running", "paused", "stopping", "stopped", "failed")

# operation → (allowed from, to)
OPERATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "start": (("created", "stopped", "stopping", "failed"), "running"),
    "pause": (("running",), "paused"),
    "resume": (("paused", "stopping", "failed"), "running"),
    # From stopping: the same flush, waited for again.
    "stop": (("created", "running", "paused", "stopping", "failed"), "stopping"),
}

# The job manager's moves: flushed (the stop's flush is done), fail (an epoch
# used up its attempts).
MANAGER_MOVES: dict[str, tuple[tuple[str, ...], str]] = {
    "flushed": (("stopping",), "stopped"),
    "fail": (("running", "stopping"), "failed"),
}

# The statuses whose epochs the job manager runs.
SCHEDULED: tuple[str, ...] = ("running", "stopping")

assert {s for moves in (OPERATIONS, MANAGER_MOVES) for froms, to in moves.values()
        for s in (*froms, to)} == set(STATUSES)
