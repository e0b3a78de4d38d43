"""The durable event buffer: an append-only log per pipeline, and a ledger beside it.

A pipeline's buffer is ``buffers/<id>.log/`` (segment files of framed Arrow
IPC batches, :mod:`.segments` and :mod:`.log`) plus ``buffers/<id>.sqlite``
(:mod:`.ledger`: dead letters, counters, latencies). Each accepted request
is one frame with the next sequence number; an epoch covers the frames
``(a, b]`` and reads them zero-copy from memory-mapped segments.

``append`` is a group commit: the requests that arrive on a process's
threads while one commit is under way go together in the next, one
``pwritev`` and one ``fdatasync``; each returns only after the sync that
covers it. Processes take turns on the log's lock, so sequence order is
commit order, and a planner never skips a frame that commits later.

A commit moves the log's committed offset (``release``); committed frames
stop counting as backlog at once, and their segments are deleted whole once
every frame in them is committed and the pipeline's ``retention`` no longer
keeps them: no row-by-row deletes, nothing for ingest to wait behind.

Backpressure: a request that would take the pipeline's uncommitted bytes
past ``max_backlog_bytes``, or the disk's free space under
``min_free_disk_bytes``, is refused whole with :class:`Unavailable` (503
with ``Retry-After``); nothing accepted before is touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from beam_pipelines.errors import NotFoundError, StorageError, Unavailable
from beam_pipelines.model.definition import Retention
from beam_pipelines.runners.base import DeadLetterQuery
from beam_pipelines.runners.local.expiry import doomed_segments
from beam_pipelines.runners.local.files import buffer_path, log_directory, remove_database
from beam_pipelines.runners.local.ledger import Ledger, SegmentSummary
from beam_pipelines.runners.local.log import SegmentLog
from beam_pipelines.runners.local.log_index import LogIndex
from beam_pipelines.runners.local.log_ranges import RetainedRanges
from beam_pipelines.runners.local.segments import FRAME_HEADER_BYTES, Head, to_ipc
from beam_pipelines.settings import data_plane_settings
from transforms.batches import conform_batch

__all__ = ["Backlog", "BufferHandles", "EventBuffer", "Pinned", "buffer_path", "log_directory"]

_log = logging.getLogger(__name__)
_RECENT_FRAMES = 50

#: Asked before retention deletes segments: the offset after which a running
#: replay still needs every frame, or None (``catalog.replays.pinned_after``).
Pinned = Callable[[], int | None]


@dataclass
class _PendingAppend:
    payload: pa.Buffer | None
    events: int
    nbytes: int
    rejected: list[tuple[int, str, str, str | None]]
    seq: int | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(frozen=True)
class Backlog:
    """What is buffered after a given sequence number."""

    last_seq: int
    events: int
    bytes: int
    oldest_ingested_at: float | None


class EventBuffer:
    """Append Arrow batches durably; read sequence ranges back zero-copy."""

    def __init__(self, path: str, *, create: bool = False, max_backlog_bytes: int | None = None,
                 min_free_disk_bytes: int | None = None) -> None:
        """Open a pipeline's buffer; only ``create`` makes a new one.

        Opening never creates a file, so a handle to a deleted pipeline's
        buffer can never bring an orphan log into being and acknowledge
        events into it. The backpressure limits default to the settings
        (``PIPELINE_DO_MAX_BACKLOG_BYTES``, ``PIPELINE_DO_MIN_FREE_DISK_BYTES``).
        """
        self.path = path
        settings = data_plane_settings()
        self.max_backlog_bytes = (settings.max_backlog_bytes if max_backlog_bytes is None
                                  else max_backlog_bytes)
        self.min_free_disk_bytes = (settings.min_free_disk_bytes if min_free_disk_bytes is None
                                    else min_free_disk_bytes)
        directory = log_directory(path)
        if create:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            SegmentLog.create(directory)
            Ledger.create(path)
        self._log = SegmentLog(directory)
        self._index = LogIndex(directory)
        self._ledger = Ledger(path)
        self._queue: list[_PendingAppend] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._ledger.open()  # a missing buffer fails here, with NotFoundError
        self._log.head()

    def close_connection(self) -> None:
        """Close the calling thread's ledger connection."""
        self._ledger.close_connection()

    def close(self) -> None:
        self._ledger.close_connection()
        self._log.close()

    # -- writing -----------------------------------------------------------------

    def append(self, table: pa.Table, rejected: Iterable[tuple[int, str, str, str | None]] = (),
               *, raw_bytes: int = 0, payload: pa.Buffer | None = None) -> int | None:
        """Store accepted events and dead letters durably; return the frame's sequence number.

        Returns only once the request is synced (None when no event was
        accepted). Raises :class:`Unavailable` when the backlog or the disk is
        full (nothing of the request is kept), ``NotFoundError`` once deleted.
        ``payload``: ``table`` already encoded (what ``check_room`` returned).
        """
        if payload is None and table.num_rows:
            payload = to_ipc(table)
        item = _PendingAppend(payload, table.num_rows,
                              raw_bytes or (len(payload) if payload else 0), list(rejected))
        with self._queue_lock:
            self._queue.append(item)
        with self._commit_lock:
            if not item.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        if item.error is not None:
            raise item.error
        return item.seq

    def check_room(self, table: pa.Table) -> pa.Buffer:
        """Raise what ``append`` would refuse ``table`` with now (``Unavailable``: the
        backlog or the disk is full; ``NotFoundError``: deleted), keeping nothing;
        return ``table`` encoded, for ``append(payload=...)``.

        For a caller that hands the events elsewhere before appending them
        (distributed ingest publishes, then counts): its refusal must come before
        the events left, or the client's retry would send them a second time.
        """
        payload = to_ipc(table)
        item = _PendingAppend(payload, table.num_rows, 0, [])
        with self._log.locked() as head:
            if head.deleted:
                raise NotFoundError("the pipeline was deleted")
            if not self._admit([item], head):
                assert item.error is not None
                raise item.error
        return payload

    def _commit_group(self, group: list[_PendingAppend]) -> None:
        now = time.time()
        try:
            with self._log.locked() as head:
                # Checked under the lock: once delete() has marked the log, no
                # append can be acknowledged into it any more.
                if head.deleted:
                    raise NotFoundError("the pipeline was deleted")
                accepted = self._admit(group, head)
                letters = [(now, *r) for item in accepted for r in item.rejected]
                if letters:
                    self._ledger.add_dead_letters(letters)
                framed = [item for item in accepted if item.payload is not None]
                if framed:
                    self._log.append(head, [(i.payload, i.events, i.nbytes) for i in framed
                                            if i.payload is not None], now)
                    for k, item in enumerate(framed):
                        item.seq = head.last_seq + 1 + k
        except OSError:
            _log.exception("appending to the event log %s failed", self._log.directory)
            self._fail(group, StorageError("the event buffer could not be written; retry"))
        except BaseException as err:  # noqa: BLE001 - every waiter of the group gets the failure
            self._fail(group, err)
        finally:
            for item in group:
                item.done = True

    @staticmethod
    def _fail(group: list[_PendingAppend], err: BaseException) -> None:
        for item in group:
            if item.error is None:
                item.seq, item.error = None, err

    def _admit(self, group: list[_PendingAppend], head: Head) -> list[_PendingAppend]:
        """The requests the backlog cap and the disk floor let in; the rest get 503s."""
        self._index.refresh(head, need_from=head.committed_seq + 1)
        backlog = self._index.span(head.committed_seq).size
        stat = os.statvfs(self._log.directory)
        free = stat.f_bavail * stat.f_frsize
        accepted: list[_PendingAppend] = []
        for item in group:
            need = FRAME_HEADER_BYTES + len(item.payload) + 8 if item.payload else 0
            if need and free - need < self.min_free_disk_bytes:
                item.error = Unavailable("the server's disk is nearly full: the request was not "
                                         "accepted; retry later", {"reason": "disk_full"})
            elif need and backlog and backlog + need > self.max_backlog_bytes:
                item.error = Unavailable(
                    "the pipeline's backlog of unprocessed events is full "
                    f"({backlog} of {self.max_backlog_bytes} bytes): the request was not "
                    "accepted; retry later", {"reason": "backlog_full", "backlog_bytes": backlog,
                                              "limit_bytes": self.max_backlog_bytes})
            else:
                accepted.append(item)
                backlog += need
                free -= need
        return accepted

    def recover(self) -> int:
        """Check the log's tail now and cut a torn one (every writer does this
        before its first commit; the job manager, when it opens the buffer), and
        settle a dead-letter replay a crash cut short. Returns the bytes this
        call cut (an unacknowledged write's remains)."""
        before = self._log.dropped_bytes
        with self._log.locked() as head:
            # A dead-letter replay cut short is settled before its frame can be
            # planned, committed and deleted (see .dead_letter_store).
            self._ledger.settle_marked(lambda seq: self._frame_time(head, seq))
        return self._log.dropped_bytes - before

    def mark_deleted(self) -> None:
        """Refuse every later append (in any process) before the files go away."""
        with self._log.locked() as head:
            self._log.set_head(head.moved(deleted=True), sync=True)

    def destroy(self) -> None:
        self.close()
        shutil.rmtree(log_directory(self.path), ignore_errors=True)
        remove_database(self.path)

    # -- releasing -----------------------------------------------------------------

    def release(self, after_seq: int, through_seq: int, committed_at: float, *,
                retention: Retention | None = None, pinned: Pinned | None = None) -> None:
        """After a commit: record each request's ack-to-commit latency, move the
        committed offset, and delete the segments nothing needs any more.

        The offset only moves forward; a release that was skipped is made good
        by the next (everything up to ``through_seq`` counts as committed).
        """
        head = self._log.head()
        self._index.refresh(head, need_from=after_seq + 1)
        span = self._index.span(after_seq, through_seq)
        self._ledger.record_latencies(committed_at, [(f.ingested_at, f.events)
                                                     for _, f in self._index.frames(span)])
        with self._log.locked() as head:
            if through_seq > head.committed_seq:
                head = head.moved(committed_seq=through_seq)
                self._log.set_head(head)
            if head.active_end > 0 and head.last_seq <= head.committed_seq:
                self._log.roll(head)  # all of it committed: seal it, so it can go too
        self.expire(retention, now=committed_at, pinned=pinned)

    def expire(self, retention: Retention | None = None, *, now: float | None = None,
               pinned: Pinned | None = None) -> int:
        """Delete the committed segments ``retention`` no longer keeps; return how many.

        Without retention, every sealed segment whose frames are all committed
        goes. With it, the oldest go while the committed segments are more
        than ``retention.bytes`` together, or older than ``retention.seconds``
        (by when their last frame was written). Uncommitted data always stays.

        ``pinned`` says after which offset a running replay still needs every
        frame (``catalog.replays.pinned_after``); segments holding such frames
        stay. It is asked again under the log's lock just before the files go,
        the lock a new replay holds while it checks that its range is still
        there (``RetainedRanges.holds_after``): a segment is either gone before
        that check or kept for the replay. Only the unlinks and that one read
        hold the lock, not the ledger's write (a segment a replay pinned in
        between is then counted as deleted too early: monitor figures only).
        """
        now = time.time() if now is None else now
        # No lock: only sealed, committed segments go, which no writer touches;
        # the ledger counts each segment once however many processes race here.
        doomed = _unpinned(doomed_segments(self._log, self._log.head(),
                                           retention or Retention(), now), pinned)
        if not doomed:
            return 0
        self._ledger.record_deleted(doomed, now)
        if pinned is None:
            self._log.remove_segments([summary[0] for summary, _ in doomed])
        else:
            with self._log.locked():
                doomed = _unpinned(doomed, pinned)
                self._log.remove_segments([summary[0] for summary, _ in doomed])
        if doomed:
            self._index.drop_before(doomed[-1][0][1] + 1)
        return len(doomed)

    def ranges(self) -> RetainedRanges:
        """What the log retains, as a replay asks (``runners.local.replays``)."""
        return RetainedRanges(self._log, self._index, self._ledger)

    # -- reading -------------------------------------------------------------------

    def _fresh(self, need_from: int | None = None) -> Head:
        head = self._log.head()
        self._index.refresh(head, need_from=need_from)
        return head

    def data_version(self) -> int:
        """A number that changes whenever a commit or a release moved the log:
        one read of its head, no query of the ledger."""
        head = self._log.head()
        return head.last_seq + head.committed_seq

    def backlog(self, after_seq: int, *, max_events: int | None = None,
                max_bytes: int | None = None) -> Backlog:
        """The uncommitted frames after ``after_seq``; with limits, the prefix an
        epoch may take (at least one frame, so one oversized request still moves)."""
        head = self._log.head()
        after = max(after_seq, head.committed_seq)
        self._index.refresh(head, need_from=after + 1)
        if max_events is None and max_bytes is None:
            span = self._index.span(after)
        else:
            span = self._index.prefix(after, max_events, max_bytes)
        if span.stop == span.first:
            return Backlog(after_seq, 0, 0, None)
        return Backlog(span.last_seq, span.events, span.raw_bytes, span.oldest_ingested_at)

    def read_range(self, after_seq: int, through_seq: int, schema: pa.Schema) -> pa.Table:
        """All events in frames ``(after_seq, through_seq]`` as one table, in order."""
        self._fresh(need_from=after_seq + 1)
        span = self._index.span(after_seq, through_seq)
        if span.stop - span.first != max(0, through_seq - after_seq):
            raise StorageError(f"the event log does not hold sequence numbers {after_seq + 1} "
                               f"to {through_seq}")
        tables = self._index.read(span)
        if not tables:
            return schema.empty_table()
        return pa.concat_tables([conform_batch(t, schema) for t in tables])

    def ingested_times(self, after_seq: int, through_seq: int) -> list[tuple[float, int]]:
        """(ingest time, events) per request in the range: for latency figures."""
        self._fresh(need_from=after_seq + 1)
        span = self._index.span(after_seq, through_seq)
        return [(f.ingested_at, f.events) for _, f in self._index.frames(span)]

    def recent(self, limit: int, schema: pa.Schema) -> pa.Table:
        """The newest uncommitted events, at most ``limit``: for SQL dry runs."""
        head = self._log.head()
        self._index.refresh(head, need_from=head.committed_seq + 1)
        frames = self._index.frames(self._index.span(head.committed_seq))[-_RECENT_FRAMES:]
        total, first = 0, len(frames)
        while first > 0 and total < limit:
            first -= 1
            total += frames[first][1].events
        if first == len(frames):
            return schema.empty_table()
        tables = self._index.read(self._index.span(frames[first][1].first_seq - 1,
                                                   frames[-1][1].last_seq))
        return pa.concat_tables([conform_batch(t, schema) for t in tables]).slice(max(0, total - limit))

    def events_since(self, since: float) -> int:
        """Events ingested since ``since``: deleted segments' from the ledger, the
        rest from the frames of the segments written to since then."""
        deleted_through = self._ledger.deleted_through()
        head = self._log.head()
        start = deleted_through + 1
        for _, last, path in self._log.sealed_segments(head):
            try:
                if os.stat(path).st_mtime < since:  # all of it older than the window
                    start = max(start, last + 1)
            except FileNotFoundError:
                continue
        self._index.refresh(head, need_from=start)
        return self._ledger.events_since(since) + self._index.events_since(deleted_through, since)

    def latency_percentiles(self, since: float) -> dict[str, float | None]:
        return self._ledger.latency_percentiles(since)

    def totals(self) -> dict[str, int]:
        """Everything ever accepted (the head counts it) and rejected (the ledger)."""
        head = self._log.head()
        return {"events_in": head.events_total, "bytes_in": head.raw_bytes_total,
                "events_rejected": self._ledger.rejected()}

    # -- dead letters ----------------------------------------------------------------

    def dead_letters(self, query: DeadLetterQuery | None = None) -> list[dict[str, object]]:
        return self._ledger.dead_letters(query)

    def replay_dead_letters(self, accepted: Sequence[int], table: pa.Table,
                            rejected: Sequence[tuple[int, str, str]], *,
                            publish: Callable[[pa.Table], None] | None = None,
                            ) -> tuple[list[int], list[int]]:
        """Accept dead letters again, each at most once; record new rejections.

        ``table`` holds the events of ``accepted``, row for row. Under the
        log's lock (after settling any replay a crash cut short), the ids
        still present are claimed for the next frame, their rows handed to
        ``publish`` (a distributed pipeline's transport) and appended to the
        log as that frame (synced, counted in ``events_in``), then deleted
        from the dead letters (:mod:`.dead_letter_store`). The backlog cap and
        disk floor apply as to an ingest (:class:`Unavailable`; the claim is
        undone). Returns (the ids accepted, the ids rejected again).
        """
        now = time.time()
        ids = pa.array(accepted, pa.int64())
        with self._log.locked() as head:
            if head.deleted:
                raise NotFoundError("the pipeline was deleted")

            def append(claimed: list[int]) -> None:
                events = table.filter(pc.is_in(ids, value_set=pa.array(claimed, pa.int64())))
                payload = to_ipc(events)
                item = _PendingAppend(payload, events.num_rows, len(payload), [])
                if not self._admit([item], head):
                    assert item.error is not None
                    raise item.error
                if publish is not None:
                    publish(events)
                self._log.append(head, [(payload, events.num_rows, len(payload))], now)

            self._ledger.settle_marked(lambda seq: self._frame_time(head, seq))
            try:
                return self._ledger.settle_replay(accepted, rejected,
                                                  (head.last_seq + 1, now), append)
            except OSError:
                _log.exception("replaying dead letters into %s failed", self._log.directory)
                raise StorageError("the event buffer could not be written; retry") from None

    def _frame_time(self, head: Head, seq: int) -> float | None:
        """The ingest time of frame ``seq`` if the log holds it (None if not, or gone)."""
        if seq > head.last_seq:
            return None
        self._index.refresh(head, need_from=seq)
        frames = self._index.frames(self._index.span(seq - 1, seq))
        if not frames or frames[0][1].first_seq != seq:
            return None
        return frames[0][1].ingested_at

    def expire_dead_letters(self, retention: Retention, *, now: float | None = None) -> int:
        """Delete the dead letters ``retention.seconds`` no longer keeps (none without it)."""
        if retention.seconds is None:
            return 0
        now = time.time() if now is None else now
        return self._ledger.expire_dead_letters(now - retention.seconds)


def _unpinned(doomed: list[tuple[SegmentSummary, dict[int, int]]],
              pinned: Pinned | None) -> list[tuple[SegmentSummary, dict[int, int]]]:
    """The doomed segments no running replay needs (all of them when none is asked)."""
    keep_after = None if pinned is None else pinned()
    return doomed if keep_after is None else [d for d in doomed if d[0][1] <= keep_after]


class BufferHandles:
    """A process's open buffers, one per pipeline id, opened on first use."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._open: dict[str, EventBuffer] = {}
        self._lock = threading.Lock()

    def get(self, pipeline_id: str) -> EventBuffer:
        with self._lock:
            buffer = self._open.get(pipeline_id)
            if buffer is None:
                buffer = self._open[pipeline_id] = EventBuffer(buffer_path(self.data_dir,
                                                                           pipeline_id))
            return buffer

    def forget(self, pipeline_id: str) -> EventBuffer | None:
        """Drop a handle without closing it (the caller destroys or closes it)."""
        with self._lock:
            return self._open.pop(pipeline_id, None)

    def keep_only(self, pipeline_ids: Iterable[str]) -> None:
        """Close the handles of every pipeline not named (paused, stopped, deleted)."""
        keep = set(pipeline_ids)
        with self._lock:
            stale = [self._open.pop(p) for p in set(self._open) - keep]
        for buffer in stale:
            buffer.close()

    def close(self) -> None:
        self.keep_only(())
