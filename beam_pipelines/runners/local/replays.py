"""Replays on the local runner: a retained range of the event log, run again as epochs.

``plan_replay`` resolves the range (ingest times or offsets) against what the
log still holds, cuts it into epochs by the sink's roll limits and writes the
replay and all of its epochs, ranges included, in one catalog transaction;
only then does it check, under the log's lock, that the range is still there
(``RetainedRanges.holds_after``): from that transaction on, retention keeps the
range (``catalog.replays.pinned_after``) until the replay is done or gone.

``run_replay_epoch`` is a worker's part, the live epoch protocol
(``runners.local.epochs``) with the replay's own rows: the same epoch graph
reads the range from the log and writes deterministically named files, here
named by ``{pipeline id}-{replay id}`` so they never take a live file's name
(or scratch) even in the pipeline's own sink. A retry discards what an
earlier attempt left, as its manifest names it; the commit marks the epoch
committed with its manifest once. The pipeline's offsets, epochs and files
are never touched. The job manager's ``ReplayScheduler`` runs the epochs.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from beam_pipelines.catalog.replays import (
    CANCELLED,
    DONE,
    RUNNING,
    Replay,
    ReplayEpoch,
    ReplayFile,
)
from beam_pipelines.catalog.store import PipelineRow, Store
from beam_pipelines.errors import ConflictError, DefinitionError, NotFoundError
from beam_pipelines.model.definition import definition_from_dict
from beam_pipelines.model.manifest import FileEntry
from beam_pipelines.model.times import iso
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.epoch_attempt import (
    EpochAttempt,
    discard_epoch_attempt,
    write_epoch_attempt,
)
from beam_pipelines.runners.local.epochs import EpochResult
from beam_pipelines.runners.local.files import remove_file
from beam_pipelines.storage.files import remove_scratch

if TYPE_CHECKING:
    import pyarrow as pa

    from beam_pipelines.runners.local.plan_cache import PlanCache

__all__ = ["ReplayCancelled", "ReplayRange", "cancel_replay", "delete_replays", "plan_replay",
           "planned_stamp", "replay_views", "resolve_range", "run_replay_epoch", "sample_range",
           "touch_planned"]


@dataclass(frozen=True)
class ReplayRange:
    """What the user asked to replay: ingest times (``since`` inclusive, ``until``
    exclusive, Unix seconds) or offsets (both inclusive); None: open-ended."""

    since: float | None = None
    until: float | None = None
    first_offset: int | None = None
    last_offset: int | None = None

    @property
    def by_offset(self) -> bool:
        return self.first_offset is not None or self.last_offset is not None


def resolve_range(buffer: EventBuffer, wanted: ReplayRange) -> tuple[int, int]:
    """``wanted`` as the log's offsets ``(after, through]``; a range reaching events
    retention released, or holding none, is an error naming the field and what the
    log still holds."""
    log = buffer.ranges()
    first, last, first_at = log.retained()
    held = (f"the log retains offsets {first} to {last}"
            + (f", ingested from {iso(first_at)}" if first_at is not None else "")
            if last >= first else "the log retains no events now")
    details = {"earliest_retained_offset": first if last >= first else None,
               "earliest_retained_at": iso(first_at)}
    if wanted.by_offset:
        field = "first_offset" if wanted.first_offset is not None else "last_offset"
        if wanted.first_offset is not None and wanted.first_offset < first:
            raise DefinitionError("first_offset", f"offset {wanted.first_offset} is no longer "
                                  f"retained (released by retention): {held}", **details)
        after = (first if wanted.first_offset is None else wanted.first_offset) - 1
        through = last if wanted.last_offset is None else min(last, wanted.last_offset)
    else:
        field = "since" if wanted.since is not None else "until"
        if wanted.since is not None and log.released_since(wanted.since) > 0:
            raise DefinitionError("since", f"events ingested since {iso(wanted.since)} are no "
                                  f"longer all retained (released by retention): {held}",
                                  **details)
        after, through = log.offsets_at(wanted.since, wanted.until)
    if through <= after:
        raise DefinitionError(field, f"no retained event lies in the range: {held}", **details)
    return after, through


def plan_replay(store: Store, data_dir: str, pipeline_id: str, wanted: ReplayRange, *,
                sql: str, sql_version: int | None, target_uri: str,
                target_prefix: str | None) -> dict[str, Any]:
    """Plan the replay and every one of its epochs; return its view (``replay_views``).

    The job manager runs it from its next tick, whatever the pipeline's status.
    """
    now = time.time()
    replay_id = "rp_" + secrets.token_hex(6)
    buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
    try:
        after, through = resolve_range(buffer, wanted)
        with store.reading() as s:
            row = s.get(PipelineRow, pipeline_id)
            if row is None:
                raise NotFoundError(f"no pipeline {pipeline_id!r}")
            roll = definition_from_dict(row.definition_dict()).sink.roll
        epochs = buffer.ranges().cut(after, through, roll.max_events, roll.max_bytes)
        with store.session() as s:
            s.add(Replay(id=replay_id, pipeline_id=pipeline_id, status=RUNNING,
                         range_start=after, range_end=through, since=wanted.since,
                         until=wanted.until, sql=sql, sql_version=sql_version,
                         target_uri=target_uri, target_prefix=target_prefix,
                         epochs_total=len(epochs), events_total=sum(e[2] for e in epochs),
                         created_at=now))
            s.flush()
            for number, (start, end, events) in enumerate(epochs, 1):
                s.add(ReplayEpoch(replay_id=replay_id, pipeline_id=pipeline_id, epoch=number,
                                  range_start=start, range_end=end, events=events,
                                  status="planned", planned_at=now))
        if not buffer.ranges().holds_after(after):  # released between the look and the pin
            with store.session() as s:
                s.execute(delete(Replay).where(Replay.id == replay_id))
            resolve_range(buffer, wanted)  # raises, saying what is retained now
            raise DefinitionError("since", "the range is no longer retained")
    finally:
        buffer.close()
    touch_planned(data_dir)
    store.log(pipeline_id, "info", f"replay {replay_id} planned: offsets {after + 1} to "
              f"{through}, {sum(e[2] for e in epochs)} events in {len(epochs)} epochs")
    with store.reading() as s:
        replay = s.get(Replay, replay_id)
        assert replay is not None
        return _view(replay)


def _stamp_path(data_dir: str) -> str:
    return os.path.join(data_dir, "replays.planned")


def touch_planned(data_dir: str) -> None:
    """Tell the job manager a replay was planned (it looks for replays only then)."""
    path = _stamp_path(data_dir)
    with open(path, "a"):
        pass
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def planned_stamp(data_dir: str) -> int | None:
    """When a replay was last planned (None: never): one ``stat``, no query."""
    try:
        return os.stat(_stamp_path(data_dir)).st_mtime_ns
    except FileNotFoundError:
        return None


def sample_range(data_dir: str, pipeline_id: str, wanted: ReplayRange, limit: int,
                 schema: pa.Schema) -> pa.Table:
    """The first ``limit`` retained events of the range, for a dry run."""
    buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
    try:
        after, through = resolve_range(buffer, wanted)
        start, end, _events = buffer.ranges().cut(after, through, limit, 1 << 62)[0]
        return buffer.read_range(start, end, schema).slice(0, limit)
    finally:
        buffer.close()


# -- the worker's part ------------------------------------------------------------------


def naming_id(pipeline_id: str, replay_id: str) -> str:
    """What a replay's files and scratch are named by instead of the pipeline id."""
    return f"{pipeline_id}-{replay_id}"


def run_replay_epoch(store: Store, data_dir: str, replay_id: str, epoch_no: int, *,
                     plans: PlanCache | None = None,
                     local_sink_roots: Sequence[str] | None = None) -> EpochResult:
    """Run one planned epoch of a replay and commit it. Safe to call again after a crash."""
    with store.session() as s:
        replay, epoch, row = _rows(s, replay_id, epoch_no)
        pipeline_id = replay.pipeline_id
        if epoch.status == "committed":
            return EpochResult(pipeline_id, epoch_no, epoch.events, epoch.rows_out, [],
                               already_committed=True, replay=replay_id)
        if replay.status != RUNNING:
            raise ReplayCancelled(f"replay {replay_id} was cancelled")
        retried = epoch.attempts > 0
        epoch.attempts += 1
        definition = definition_from_dict(row.definition_dict())
        sql, target = replay.sql, replay.target_uri
        range_start, range_end, planned_at = epoch.range_start, epoch.range_end, epoch.planned_at
    naming = naming_id(pipeline_id, replay_id)
    # A replay writes files to its target, never to an Iceberg table (refused at ``replay``).
    attempt = EpochAttempt.begin(data_dir, pipeline_id, naming, epoch_no, range_start,
                                 range_end, planned_at, sql, definition,
                                 replace(definition.sink, uri=target), failed_before=retried)
    sink, files = write_epoch_attempt(data_dir, attempt, local_sink_roots=local_sink_roots,
                                      plans=plans, iceberg=False)
    # Before the commit, as ``run_epoch`` does: a replay seen done has nothing left in _tmp/.
    remove_scratch(sink, naming, epoch_no, remote=attempt.retried)
    try:
        result = commit_replay_epoch(store, replay_id, epoch_no, files)
    except ReplayCancelled:
        discard_epoch_attempt(sink, naming, epoch_no, attempt.manifest_path)  # cancelled while it ran
        raise
    remove_file(attempt.manifest_path)
    return result


def commit_replay_epoch(store: Store, replay_id: str, epoch_no: int,
                        files: list[FileEntry]) -> EpochResult:
    """Mark the epoch committed with its manifest, count it in its replay: one transaction.
    The replay is ``done`` with its last epoch's commit."""
    now = time.time()
    with store.session() as s:
        replay, epoch, _row = _rows(s, replay_id, epoch_no)
        if epoch.status == "committed":
            return EpochResult(replay.pipeline_id, epoch_no, epoch.events, epoch.rows_out, [],
                               already_committed=True, replay=replay_id)
        if replay.status != RUNNING:
            raise ReplayCancelled(f"replay {replay_id} was cancelled")
        rows_out = sum(f.rows for f in files)
        epoch.status, epoch.committed_at, epoch.rows_out = "committed", now, rows_out
        for f in files:
            s.add(ReplayFile(replay_id=replay_id, epoch=epoch_no, path=f.uri, rows=f.rows,
                             bytes=f.bytes, min_event_time=f.min_event_time,
                             max_event_time=f.max_event_time))
        replay.epochs_done += 1
        replay.events_done += epoch.events
        replay.rows_out += rows_out
        replay.files_written += len(files)
        if replay.epochs_done >= replay.epochs_total:
            replay.status, replay.finished_at = DONE, now
        result = EpochResult(replay.pipeline_id, epoch_no, epoch.events, rows_out, list(files),
                             range_start=epoch.range_start, range_end=epoch.range_end,
                             committed_at=now, replay=replay_id)
    return result


class ReplayCancelled(NotFoundError):
    """The replay was cancelled while its epoch ran: the epoch's files are discarded."""


def cancel_replay(store: Store, pipeline_id: str, replay_id: str) -> dict[str, Any]:
    """Stop planning the replay's epochs and release its pin. An epoch running now
    finishes but does not commit (its files are discarded); committed ones stay."""
    now = time.time()
    with store.session() as s:
        replay = s.get(Replay, replay_id)
        if replay is None or replay.pipeline_id != pipeline_id:
            raise NotFoundError(f"the pipeline has no replay {replay_id!r}",
                                {"field": "cancel"})
        if replay.status != RUNNING:
            raise ConflictError(f"replay {replay_id} is {replay.status}: only a running "
                                "replay can be cancelled", {"status": replay.status})
        replay.status, replay.finished_at = CANCELLED, now
        view = _view(replay)
    store.log(pipeline_id, "info", f"replay {replay_id} cancelled after {view['epochs_done']} "
              f"of {view['epochs_total']} epochs")
    return view


def _rows(session: Session, replay_id: str,
          epoch_no: int) -> tuple[Replay, ReplayEpoch, PipelineRow]:
    replay = session.get(Replay, replay_id)
    row = session.get(PipelineRow, replay.pipeline_id) if replay is not None else None
    if replay is None or row is None:
        raise NotFoundError(f"replay {replay_id} is gone (its pipeline was deleted)")
    epoch = session.scalars(select(ReplayEpoch).where(ReplayEpoch.replay_id == replay_id,
                                                      ReplayEpoch.epoch == epoch_no)).one()
    return replay, epoch, row


# -- the catalog's views ------------------------------------------------------------------


def replay_views(store: Store, pipeline_id: str) -> list[dict[str, Any]]:
    """Every replay of the pipeline, newest first, as ``monitor`` shows them."""
    with store.reading() as s:
        rows = s.scalars(select(Replay).where(Replay.pipeline_id == pipeline_id)
                         .order_by(Replay.created_at.desc())).all()
        return [_view(r) for r in rows]


def replay_files(store: Store, replay_id: str) -> list[dict[str, Any]]:
    """The files a replay's committed epochs wrote, oldest first."""
    with store.reading() as s:
        found = s.scalars(select(ReplayFile).where(ReplayFile.replay_id == replay_id)
                          .order_by(ReplayFile.id)).all()
        return [f.public() for f in found]


def _view(replay: Replay) -> dict[str, Any]:
    return {"id": replay.id, "status": replay.status,
            "range": {"first_offset": replay.range_start + 1, "last_offset": replay.range_end,
                      "since": iso(replay.since), "until": iso(replay.until)},
            "sql_version": replay.sql_version,
            "target": {"prefix": replay.target_prefix, "uri": replay.target_uri},
            "epochs_done": replay.epochs_done, "epochs_total": replay.epochs_total,
            "events_done": replay.events_done, "events_total": replay.events_total,
            "rows_out": replay.rows_out, "files_written": replay.files_written,
            "last_error": replay.last_error, "created_at": iso(replay.created_at),
            "finished_at": iso(replay.finished_at)}


def delete_replays(session: Session, pipeline_id: str) -> None:
    """With the pipeline: its replays go, and so do their pins; the job manager
    cancels their epochs in flight when it sees them gone."""
    ids = select(Replay.id).where(Replay.pipeline_id == pipeline_id)
    for model in (ReplayFile, ReplayEpoch):
        session.execute(delete(model).where(model.replay_id.in_(ids)))
    session.execute(delete(Replay).where(Replay.pipeline_id == pipeline_id))
