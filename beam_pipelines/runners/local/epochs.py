"""The epoch protocol: plan, run, commit. Exactly-once output, simply.

1. plan: an epoch row ``{epoch, range (a, b], sql_version, status=planned}``.
2. run: a bounded Beam pipeline writes deterministically named files.
3. commit: one transaction marks the epoch committed, stores its file
   manifest and advances the pipeline's offset to ``b``.
4. recovery: a planned epoch that is not committed is re-run with the same
   range before any new epoch is planned. A first attempt runs the SQL
   version it was planned under; a retry after a failure runs the pipeline's
   *current* version (``transform`` is how a user fixes an epoch that keeps
   failing; ``resume`` from ``failed`` re-plans the epoch with it too).
   Each attempt first discards what an earlier one left in the sink (its
   ``_tmp/epoch-N/`` scratch and any file it moved into place, as its
   manifest names them), so a new version's files never sit beside the old
   one's; a failed attempt discards its own at once.
5. buffer segments are deleted only after the commit (and after the
   pipeline's ``retention``); a committed epoch leaves nothing in ``_tmp/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from beam_pipelines.catalog.replays import pin_of
from beam_pipelines.catalog.store import Epoch, EpochFile, PipelineRow, SqlVersion, Store
from beam_pipelines.model.definition import PipelineDefinition, Retention, definition_from_dict
from beam_pipelines.model.manifest import FileEntry
from beam_pipelines.runners.local.buffer import Backlog, EventBuffer, Pinned, buffer_path
from beam_pipelines.runners.local.epoch_attempt import EpochAttempt, write_epoch_attempt
from beam_pipelines.runners.local.files import remove_file
from beam_pipelines.storage.files import remove_scratch

if TYPE_CHECKING:  # Beam is imported in the workers only, when an epoch runs
    from beam_pipelines.runners.local.plan_cache import PlanCache

__all__ = ["EpochResult", "Plan", "commit_epoch", "epoch_is_due", "pending_epoch", "plan_epoch",
           "release_epoch", "retry_delay", "run_epoch", "try_plan_epoch"]


@dataclass(frozen=True)
class EpochResult:
    pipeline_id: str
    epoch: int
    events: int
    rows_out: int
    files: list[FileEntry]
    already_committed: bool = False
    # The buffer rows the epoch covered, for ``release_epoch``.
    range_start: int = 0
    range_end: int = 0
    committed_at: float = 0.0
    # A replay's epoch (``runners.local.replays``): its id; None for the pipeline's own.
    replay: str | None = None


def epoch_is_due(definition: PipelineDefinition, backlog: Backlog, *, flush: bool,
                 now: float) -> bool:
    if backlog.events == 0:
        return False
    if flush:
        return True
    roll = definition.sink.roll
    return (backlog.events >= roll.max_events or backlog.bytes >= roll.max_bytes
            or now >= _due_by_age_at(definition, backlog))


def _due_by_age_at(definition: PipelineDefinition, backlog: Backlog) -> float:
    """When a backlog that is not due yet becomes due with no new event: its
    oldest event's age reaching the roll interval (never, if it is empty).
    Only new events can make it due sooner, by the roll's size limits."""
    if backlog.events == 0 or backlog.oldest_ingested_at is None:
        return float("inf")
    return backlog.oldest_ingested_at + definition.sink.roll.interval_seconds


@dataclass(frozen=True)
class Plan:
    """What ``try_plan_epoch`` did: the epoch it planned, or until when none
    will be due unless new events arrive (``float("inf")``: not by age)."""

    epoch: int | None
    quiet_until: float = 0.0


def pending_epoch(store: Store, pipeline_id: str, *, exclude: Iterable[int] = ()) -> int | None:
    """The first planned but uncommitted epoch of a pipeline not in ``exclude`` (recovery)."""
    query = select(Epoch.epoch).where(Epoch.pipeline_id == pipeline_id, Epoch.status == "planned")
    skip = list(exclude)
    if skip:
        query = query.where(Epoch.epoch.not_in(skip))
    with store.session() as s:
        return s.scalars(query.order_by(Epoch.epoch)).first()


def plan_epoch(store: Store, pipeline_id: str, buffer: EventBuffer, *, flush: bool,
               now: float | None = None, ways: int = 1) -> int | None:
    """Write the next epoch's row if one is due; return its number.

    ``ways`` > 1 plans a flush to run on that many workers: the epoch takes
    about 1/ways of the backlog (or less, by the roll's limits).
    """
    return try_plan_epoch(store, pipeline_id, buffer, flush=flush, now=now, ways=ways).epoch


def try_plan_epoch(store: Store, pipeline_id: str, buffer: EventBuffer, *, flush: bool,
                   now: float | None = None, ways: int = 1) -> Plan:
    """``plan_epoch``, also saying until when nothing is due when it plans nothing."""
    now = time.time() if now is None else now
    with store.session() as s:
        row = s.get(PipelineRow, pipeline_id)
        if row is None:
            return Plan(None, float("inf"))
        definition = definition_from_dict(row.definition_dict())
        roll = definition.sink.roll
        # An epoch starts where the last planned one ends, committed or not.
        start = s.scalar(select(func.max(Epoch.range_end)).where(
            Epoch.pipeline_id == pipeline_id)) or row.committed_seq
        head = buffer.backlog(start)
        if not epoch_is_due(definition, head, flush=flush, now=now):
            return Plan(None, _due_by_age_at(definition, head))
        max_events = roll.max_events
        if ways > 1:
            max_events = min(max_events, -(-head.events // ways))
        take = buffer.backlog(start, max_events=max_events, max_bytes=roll.max_bytes)
        number = row.next_epoch
        s.add(Epoch(pipeline_id=pipeline_id, epoch=number, range_start=start,
                    range_end=take.last_seq, sql_version=row.version, status="planned",
                    events=take.events, planned_at=now))
        row.next_epoch = number + 1
        return Plan(number)


def run_epoch(store: Store, data_dir: str, pipeline_id: str, epoch_no: int, *,
              release: bool = True, predecessor_timeout: float = 0.0,
              local_sink_roots: Sequence[str] | None = None,
              plans: PlanCache | None = None) -> EpochResult:
    """Run a planned epoch end to end and commit it. Safe to call again after a crash.

    With ``release``, the buffer's committed offset moves here; the job
    manager passes False and calls ``release_epoch`` on a thread of its own,
    so a worker goes on to the next epoch at once.

    Epochs commit in order. One that runs alongside its predecessor (the job
    manager does this to flush a stopping pipeline on every worker) writes
    its files, then waits up to ``predecessor_timeout`` seconds for the
    predecessor's commit; if that does not come, it fails and is retried.

    A local sink is checked against ``local_sink_roots`` (default: the data
    dir's lake/ and ``PIPELINE_DO_LOCAL_SINK_ROOTS``) again here: a symlink
    made since ``create`` must not lead the epoch's files elsewhere.

    ``plans``: the caller's compiled epoch plans (``compiler.PlanCache``), so
    an epoch re-runs its pipeline's plan instead of building a Beam graph.
    """
    with store.session() as s:
        epoch, row = _epoch_and_row(s, pipeline_id, epoch_no)
        if epoch.status == "committed":
            return EpochResult(pipeline_id, epoch_no, epoch.events, epoch.rows_out, [],
                               already_committed=True)
        retried = epoch.attempts > 0
        if retried and epoch.sql_version != row.version:
            # An earlier attempt failed, and a transform came since: the retry
            # runs the current SQL (the user's fix) with a fresh budget of
            # attempts; the range stays. A first attempt runs the version it
            # was planned under: a new version applies from the next epoch.
            epoch.sql_version = row.version
            epoch.attempts = 0
        epoch.attempts += 1
        sql = s.scalars(select(SqlVersion.sql).where(
            SqlVersion.pipeline_id == pipeline_id,
            SqlVersion.version == epoch.sql_version)).one()
        definition = definition_from_dict(row.definition_dict())
        range_start, range_end, planned_at = epoch.range_start, epoch.range_end, epoch.planned_at
    attempt = EpochAttempt.begin(data_dir, pipeline_id, pipeline_id, epoch_no, range_start,
                                 range_end, planned_at, sql, definition, definition.sink,
                                 failed_before=retried)
    sink, files = write_epoch_attempt(data_dir, attempt, local_sink_roots=local_sink_roots,
                                      plans=plans, iceberg=True)
    # The scratch goes before the commit: whoever sees the epoch committed (its
    # backlog gone) finds nothing of it in _tmp/, and a crash in between leaves
    # an uncommitted epoch whose retry cleans up. After a retry, gs:// and s3://
    # may hold what a failed attempt could not delete.
    remove_scratch(sink, pipeline_id, epoch_no, remote=attempt.retried)
    if predecessor_timeout > 0:
        _await_commit_through(store, pipeline_id, range_start, predecessor_timeout)
    result = commit_epoch(store, pipeline_id, epoch_no, files)
    if release:
        release_epoch(data_dir, result, retention=definition.retention,
                      pinned=pin_of(store, pipeline_id))
    remove_file(attempt.manifest_path)
    return result


def _await_commit_through(store: Store, pipeline_id: str, seq: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with store.reading() as s:
            committed = s.scalar(select(PipelineRow.committed_seq)
                                 .where(PipelineRow.id == pipeline_id))
        if committed is None or committed >= seq or time.monotonic() >= deadline:
            return  # commit_epoch judges: it refuses an epoch whose predecessor is missing
        time.sleep(0.01)


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt of an epoch (live or replay) that failed
    ``attempts`` times: 0.5 s, doubling, at most 60 s."""
    return min(60.0, 0.5 * 2 ** (min(attempts, 8) - 1))


def release_epoch(data_dir: str, result: EpochResult, *,
                  retention: Retention | None = None, pinned: Pinned | None = None) -> None:
    """Move the buffer's committed offset past a committed epoch, recording its
    latencies, and delete the segments ``retention`` no longer keeps.

    Skipping it is safe: the next release covers every frame up to its own end.
    """
    if result.already_committed:
        return
    buffer = EventBuffer(buffer_path(data_dir, result.pipeline_id))
    try:
        buffer.release(result.range_start, result.range_end, result.committed_at,
                       retention=retention, pinned=pinned)
    finally:
        buffer.close()


def _epoch_and_row(session: Any, pipeline_id: str, epoch_no: int) -> tuple[Epoch, PipelineRow]:
    """The epoch's row and its pipeline's, read in the caller's transaction."""
    epoch = session.scalars(select(Epoch).where(Epoch.pipeline_id == pipeline_id,
                                                Epoch.epoch == epoch_no)).one()
    row = session.get(PipelineRow, pipeline_id)
    assert row is not None
    return epoch, row


def commit_epoch(store: Store, pipeline_id: str, epoch_no: int,
                 files: list[FileEntry]) -> EpochResult:
    """Mark committed, store the manifest, advance the offset: one transaction."""
    now = time.time()
    with store.session() as s:
        epoch, row = _epoch_and_row(s, pipeline_id, epoch_no)
        if epoch.status == "committed":
            return EpochResult(pipeline_id, epoch_no, epoch.events, epoch.rows_out, [],
                               already_committed=True)
        if row.committed_seq != epoch.range_start:
            raise RuntimeError(f"epoch {epoch_no} starts at {epoch.range_start} but the "
                               f"pipeline is committed through {row.committed_seq}")
        rows_out = sum(f.rows for f in files)
        epoch.status = "committed"
        epoch.committed_at = now
        epoch.rows_out = rows_out
        for f in files:
            s.add(EpochFile(pipeline_id=pipeline_id, epoch=epoch_no, path=f.uri,
                            rows=f.rows, bytes=f.bytes, min_event_time=f.min_event_time,
                            max_event_time=f.max_event_time))
        row.committed_seq = epoch.range_end
        row.events_out += rows_out
        row.bytes_out += sum(f.bytes for f in files)
        row.files_written += len(files)
        row.epochs_committed += 1
        row.last_commit_at = now
        row.updated_at = now
        events = epoch.events
        range_start, range_end = epoch.range_start, epoch.range_end
    return EpochResult(pipeline_id, epoch_no, events, rows_out, list(files),
                       range_start=range_start, range_end=range_end, committed_at=now)
