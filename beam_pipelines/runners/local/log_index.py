"""A process's index of a pipeline's event log: the frames it has seen, by sequence number.

Built from the segments' frame headers (a ``pread`` of 64 bytes per request,
never the payloads), then followed incrementally: each look reads the head
and indexes only the frames written since, up to the head and never past it.
Sequence numbers are contiguous, so frame ``seq`` sits at list position
``seq - first_seq``; running sums answer "how many events and bytes after
``seq``" with two lookups, and "which prefix fits the roll's limits" with a
bisection.

Segments released by another process vanish from the directory; the index
drops their frames when it notices, so a long-lived ingest process keeps
only the live part of the log in memory.
"""

from __future__ import annotations

import bisect
import os
import threading
from array import array
from dataclasses import dataclass

import pyarrow as pa

from beam_pipelines.runners.local.segments import (
    FRAME_HEADER_BYTES,
    Frame,
    Head,
    frame_payload,
    parse_frame_header,
    scan_frames,
    segment_name,
    segment_seqs,
)

__all__ = ["LogIndex", "Span"]

# Frames kept before the oldest one a caller asks for, at most.
_KEEP_BEHIND = 10_000


@dataclass(frozen=True)
class Span:
    """The indexed frames ``(after, through]``: how many, and what they hold."""

    first: int  # list positions [first, stop)
    stop: int
    last_seq: int
    events: int
    raw_bytes: int
    size: int  # bytes on disk
    oldest_ingested_at: float | None


class LogIndex:
    """Frame headers as columns (``array``s, ~80 bytes a request in every process
    that indexes it), not objects: a backlog of small requests stays small."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.lock = threading.RLock()
        self.first_seq = 1  # of the first indexed frame; frames are contiguous from there
        self._clear()
        self._scan_segment = 0  # where the next frame is looked for
        self._scan_offset = 0

    def _clear(self) -> None:
        self._segments = array("q")  # each frame's segment (its first seq)
        self._offsets = array("q")
        self._lengths = array("q")
        self._crcs = array("q")
        self._counts = array("q")  # events
        self._raw_bytes = array("q")
        self._ingested_at = array("d")
        self._events = array("q", [0])  # running sums, one longer than the columns
        self._raw = array("q", [0])
        self._size = array("q", [0])

    def __len__(self) -> int:
        return len(self._offsets)

    def _frame(self, i: int) -> Frame:
        seq = self.first_seq + i
        return Frame(seq, seq, self._counts[i], self._raw_bytes[i], self._ingested_at[i],
                     self._lengths[i], self._crcs[i], self._offsets[i])

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self) - 1

    def refresh(self, head: Head, need_from: int | None = None) -> None:
        """Index every frame up to ``head``; from ``need_from`` on if it is set and
        earlier than what the index holds (a range read needs only its segment on)."""
        with self.lock:
            if head.last_seq < self.last_seq or not self._last_frame_holds():
                self._restart(None, force=True)  # recovery cut frames this index had seen
            self._drop_vanished()
            if need_from is not None and (not len(self) or need_from < self.first_seq):
                self._restart(need_from)
            elif need_from is not None and need_from - self.first_seq > _KEEP_BEHIND:
                # Committed frames nobody asked for since: a long-lived process
                # (an ingest worker) keeps only what it uses, not all of retention.
                self.drop_before(need_from)
            elif self._scan_segment == 0:
                self._restart(None)
            self._extend(head)

    def _restart(self, need_from: int | None, *, force: bool = False) -> None:
        """Index again from the segment holding ``need_from`` (None: the oldest there)."""
        present = segment_seqs(self.directory)
        starts = [s for s in present if need_from is not None and s <= need_from]
        start = starts[-1] if starts else (present[0] if present else 0)
        if not force and len(self) and self._segments[0] == start:
            return  # already from there: what lies before it is gone
        self.first_seq = start or 1
        self._clear()
        self._scan_segment, self._scan_offset = start, 0

    def _extend(self, head: Head) -> None:
        restarted = False
        while self._scan_segment and self.last_seq < head.last_seq:
            segment = self._scan_segment
            try:
                fd = os.open(os.path.join(self.directory, segment_name(segment)),
                             os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                # Released while we looked (so all of it was committed): go on
                # from the oldest segment still there.
                if restarted:
                    return
                restarted = True
                self._restart(None, force=True)
                continue
            try:
                active = segment == head.active_first_seq
                size = os.fstat(fd).st_size
                end = head.active_end if active else size
                for frame in scan_frames(fd, self._scan_offset, end, expect_seq=self.last_seq + 1):
                    self._add(segment, frame)
                    self._scan_offset = frame.end
            finally:
                os.close(fd)
            if active and self.last_seq < head.last_seq and size >= end and not restarted:
                # The head's frames are all there, yet ours do not lead to them:
                # recovery cut frames this index had seen (a disk that lost
                # synced writes) and new ones took their numbers. Start over.
                restarted = True
                self._restart(None, force=True)
                continue
            if active or segment > head.active_first_seq or self.last_seq + 1 == segment:
                return  # the head's segment (or a torn one): nothing more until the head moves
            self._scan_segment, self._scan_offset = self.last_seq + 1, 0

    def _last_frame_holds(self) -> bool:
        """Whether the newest indexed frame is still on disk as indexed: after a
        disk lost synced writes, recovery cuts them and new frames take their
        numbers (one ``pread`` per look)."""
        if not len(self):
            return True
        frame = self._frame(len(self) - 1)
        try:
            fd = os.open(os.path.join(self.directory, segment_name(self._segments[-1])),
                         os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True  # released: _drop_vanished forgets it
        try:
            return parse_frame_header(os.pread(fd, FRAME_HEADER_BYTES, frame.offset),
                                      frame.offset) == frame
        finally:
            os.close(fd)

    def _add(self, segment: int, frame: Frame) -> None:
        self._segments.append(segment)
        self._offsets.append(frame.offset)
        self._lengths.append(frame.length)
        self._crcs.append(frame.payload_crc)
        self._counts.append(frame.events)
        self._raw_bytes.append(frame.raw_bytes)
        self._ingested_at.append(frame.ingested_at)
        self._events.append(self._events[-1] + frame.events)
        self._raw.append(self._raw[-1] + frame.raw_bytes)
        self._size.append(self._size[-1] + frame.size)

    def _drop_vanished(self) -> None:
        """Forget the oldest segments once their files are gone (released)."""
        while len(self) and self._segments[0] != self._scan_segment and not os.path.exists(
                os.path.join(self.directory, segment_name(self._segments[0]))):
            gone = bisect.bisect_right(self._segments, self._segments[0])
            self.drop_before(self.first_seq + gone)

    def drop_before(self, seq: int) -> None:
        """Forget the frames before ``seq``."""
        with self.lock:
            k = max(0, min(len(self), seq - self.first_seq))
            if k:
                self.first_seq += k
                for column in (self._segments, self._offsets, self._lengths, self._crcs,
                               self._counts, self._raw_bytes, self._ingested_at,
                               self._events, self._raw, self._size):
                    del column[:k]

    # -- questions ---------------------------------------------------------------

    def span(self, after: int, through: int | None = None) -> Span:
        """The indexed frames with ``after < seq <= through`` (``None``: to the end)."""
        with self.lock:
            first = max(0, min(len(self), after + 1 - self.first_seq))
            stop = len(self) if through is None else \
                max(first, min(len(self), through + 1 - self.first_seq))
            return self._span(first, stop)

    def _span(self, first: int, stop: int) -> Span:
        oldest = self._ingested_at[first] if stop > first else None
        return Span(first, stop, self.first_seq + stop - 1 if stop > first else -1,
                    self._events[stop] - self._events[first], self._raw[stop] - self._raw[first],
                    self._size[stop] - self._size[first], oldest)

    def prefix(self, after: int, max_events: int | None, max_bytes: int | None) -> Span:
        """The longest run of frames after ``after`` within the limits; at least one frame."""
        with self.lock:
            whole = self.span(after)
            stop = whole.stop
            if max_events:
                stop = min(stop, bisect.bisect_right(
                    self._events, self._events[whole.first] + max_events) - 1)
            if max_bytes:
                stop = min(stop, bisect.bisect_right(
                    self._raw, self._raw[whole.first] + max_bytes) - 1)
            stop = max(stop, min(whole.first + 1, whole.stop))
            return self._span(whole.first, stop)

    def first_at_or_after(self, when: float) -> int:
        """The sequence number of the first indexed frame ingested at ``when`` or
        later (one past the last when none is). Frames get their time under the
        log's lock as they get their numbers, so times rise with sequence numbers."""
        with self.lock:
            return self.first_seq + bisect.bisect_left(self._ingested_at, when)

    def frames(self, span: Span) -> list[tuple[int, Frame]]:
        with self.lock:
            return [(self._segments[i], self._frame(i)) for i in range(span.first, span.stop)]

    def events_since(self, after: int, since: float) -> int:
        """Events in the frames after ``after`` ingested at ``since`` or later."""
        with self.lock:
            first = self.span(after).first
            i = len(self)
            while i > first and self._ingested_at[i - 1] >= since:  # newest first
                i -= 1
            return self._events[len(self)] - self._events[i]

    def read(self, span: Span) -> list[pa.Table]:
        """The span's events, one table per frame, zero-copy from the segments' maps."""
        tables: list[pa.Table] = []
        maps: dict[int, pa.MemoryMappedFile] = {}
        try:
            for segment, frame in self.frames(span):
                if segment not in maps:
                    maps[segment] = pa.memory_map(os.path.join(self.directory,
                                                               segment_name(segment)))
                tables.append(frame_payload(maps[segment], frame))
        finally:
            for mapped in maps.values():
                mapped.close()  # the tables keep the mapped pages they point into
        return tables
