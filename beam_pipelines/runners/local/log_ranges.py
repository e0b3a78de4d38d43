"""What a pipeline's event log retains, as a replay asks about it.

A replay (``runners.local.replays``) names its range by ingest times or
offsets; these answer, from the log's index (frame headers only, never the
payloads), which offsets that is, what the log still holds, whether
retention released part of it, and how the range cuts into epochs. The
last check, ``holds_after``, is made under the log's lock, the lock
``EventBuffer.expire`` holds while it asks which offsets are pinned.
"""

from __future__ import annotations

from beam_pipelines.errors import StorageError
from beam_pipelines.runners.local.ledger import Ledger
from beam_pipelines.runners.local.log import SegmentLog
from beam_pipelines.runners.local.log_index import LogIndex
from beam_pipelines.runners.local.segments import Head, segment_seqs

__all__ = ["RetainedRanges"]


class RetainedRanges:
    """A view of one open buffer's log, index and ledger (``EventBuffer.ranges``)."""

    def __init__(self, log: SegmentLog, index: LogIndex, ledger: Ledger) -> None:
        self._log = log
        self._index = index
        self._ledger = ledger

    def _fresh(self, need_from: int | None = None) -> Head:
        head = self._log.head()
        self._index.refresh(head, need_from=need_from)
        return head

    def retained(self) -> tuple[int, int, float | None]:
        """What the log holds now: (its first offset, its last, the first's ingest
        time); the first is one past the last when it holds nothing."""
        head = self._fresh(need_from=1)
        if head.last_seq < self._index.first_seq or not len(self._index):
            return head.last_seq + 1, head.last_seq, None
        first = self._index.first_seq
        return first, head.last_seq, self._index.frames(self._index.span(first - 1, first))[0][
            1].ingested_at

    def offsets_at(self, since: float | None, until: float | None) -> tuple[int, int]:
        """The retained frames ingested from ``since`` (inclusive) to ``until``
        (exclusive) as an offset range ``(after, through]``."""
        head = self._fresh(need_from=1)
        first = self._index.first_seq
        after = (first if since is None else self._index.first_at_or_after(since)) - 1
        through = head.last_seq if until is None else self._index.first_at_or_after(until) - 1
        return after, min(through, head.last_seq)

    def released_since(self, since: float) -> int:
        """Events released by retention that were ingested at ``since`` or later
        (counted by the second, so a frame in ``since``'s second counts)."""
        return self._ledger.events_since(since)

    def cut(self, after: int, through: int, max_events: int,
            max_bytes: int) -> list[tuple[int, int, int]]:
        """Frames ``(after, through]`` cut into epochs by the roll's limits:
        ``(range_start, range_end, events)`` each, at least one frame each."""
        self._fresh(need_from=after + 1)
        epochs: list[tuple[int, int, int]] = []
        while after < through:
            last = min(self._index.prefix(after, max_events, max_bytes).last_seq, through)
            if last <= after:
                raise StorageError(f"the event log does not hold offset {after + 1}")
            epochs.append((after, last, self._index.span(after, last).events))
            after = last
        return epochs

    def holds_after(self, after: int) -> bool:
        """Whether every frame after ``after`` is still in the log, judged under its
        lock (see ``expire``): a replay pinned from ``after`` is safe once this holds."""
        with self._log.locked() as head:
            present = segment_seqs(self._log.directory)
            return after >= head.last_seq or (bool(present) and present[0] <= after + 1)
