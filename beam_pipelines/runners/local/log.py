"""A pipeline's event log: the writer side (lock, group commit, roll, recovery, deletion).

Every process that appends (each gunicorn worker, each thread of one) goes
through the log's lock: an ``flock`` of its ``HEAD`` file. Under it a writer
reads the head, appends its group's frames at the head's end with one
``pwritev``, makes them durable with one ``fdatasync``, and only then moves
the head: a reader, which never looks past the head, never sees an event
that a crash could still take away, and sequence order is commit order.

The head is rewritten without a sync of its own: after a power loss it may
lag the segments, never lead them, and recovery walks on from it over every
frame whose checksums hold. A writer that finds the active segment longer or
shorter than the head says, or a segment beyond it, recovers first
(:meth:`SegmentLog.recover`): whole frames are kept, a torn tail is cut off
and logged. A torn frame was never acknowledged: acks follow the sync.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyarrow as pa

from beam_pipelines.errors import NotFoundError, PipelineDoError, Unavailable
from beam_pipelines.runners.local.files import ledger_beside, remove_file
from beam_pipelines.runners.local.segments import (
    Head,
    encode_frame,
    fsync_path,
    read_head,
    scan_frames,
    segment_name,
    segment_seqs,
    write_head,
)

__all__ = ["SEGMENT_BYTES", "FrameIn", "SegmentLog"]

_log = logging.getLogger(__name__)

# A segment is sealed and a new one started past this size. Committed data
# leaves the disk a whole segment at a time, so this bounds what a release
# leaves behind; 32 MiB is a few hundred requests of 1,000 events.
SEGMENT_BYTES = 32 << 20
_HEAD_READ_ATTEMPTS = 1000

# (IPC payload, events, raw request bytes) of one request
FrameIn = tuple[pa.Buffer | bytes, int, int]


def _missing(directory: str) -> PipelineDoError:
    """Why a log has no head: an earlier release's buffer beside it that was not
    upgraded yet (its events are kept, ``runners.local.upgrade`` logged why and the
    next start tries again: 503, retry later), or no buffer at all (404)."""
    if os.path.exists(ledger_beside(directory)):
        return Unavailable("the pipeline's event buffer is from an earlier release and was "
                           "not upgraded yet; its events are kept (the pipeline's logs say "
                           "why; the server tries again when it restarts)")
    return NotFoundError("the pipeline's buffer does not exist")


class SegmentLog:
    """One pipeline's log directory, as this process writes to it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.head_path = os.path.join(directory, "HEAD")
        self._fd: int | None = None
        self._pid = 0
        self._active_fd: int | None = None
        self._active_first = 0
        self._checked = False  # this handle's first lock looks for a crash's leftovers
        self.dropped_bytes = 0  # cut from torn tails by this handle's recoveries
        self._lock = threading.Lock()  # one thread of the process writes at a time

    @staticmethod
    def create(directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, "HEAD"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            if read_head(fd) is None:
                write_head(fd, Head(), sync=True)
        finally:
            os.close(fd)
        fsync_path(directory)

    # -- the head -------------------------------------------------------------

    def _head_fd(self) -> int:
        # Opened per process: a descriptor inherited across fork shares its
        # flock with the parent and would not order the two.
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self.head_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                raise _missing(self.directory) from None
            self._pid = os.getpid()
            self._active_fd = None
            self._active_first = 0
            self._checked = False
        return self._fd

    def head(self) -> Head:
        """The head as it is now (a reader's view: no lock taken)."""
        fd = self._head_fd()
        for _ in range(_HEAD_READ_ATTEMPTS):
            head = read_head(fd)
            if head is not None:
                return head
            time.sleep(0)  # a writer is halfway through its 48 bytes
        return self._locked_head()

    def _locked_head(self) -> Head:
        """A head that never checks out (a crash tore it): rebuilt under the lock."""
        with self.locked() as head:
            return head

    @contextmanager
    def locked(self) -> Iterator[Head]:
        """Hold the log's lock; yield the head, the log recovered if a writer died."""
        with self._lock:
            fd = self._head_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                head = read_head(fd)
                # A deleted log is never recovered (its files may be gone already):
                # its callers see ``head.deleted`` and refuse.
                if head is None or (not head.deleted and self._needs_recovery(head)):
                    head = self.recover(head)
                self._checked = True
                yield head
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _needs_recovery(self, head: Head) -> bool:
        if head.active_first_seq == 0:
            return not self._checked and bool(segment_seqs(self.directory))
        fd = self._active(head.active_first_seq)
        if fd is None or os.fstat(fd).st_size != head.active_end:
            return True
        following = head.last_seq + 1  # a segment a dead writer rolled to
        return following != head.active_first_seq and os.path.exists(self._path(following))

    # -- writing ---------------------------------------------------------------

    def append(self, head: Head, frames: Sequence[FrameIn], now: float) -> Head:
        """Write frames after ``head`` and make them durable; return the new head.

        Call under :meth:`locked`. The frames get the sequence numbers after
        ``head.last_seq``, in order. On any failure nothing past ``head``
        counts: the file is cut back to it, and the caller acknowledges nothing.
        """
        if head.active_first_seq == 0 or head.active_end >= SEGMENT_BYTES:
            head = self.roll(head)
        fd = self._active(head.active_first_seq)
        assert fd is not None
        pieces: list[pa.Buffer | bytes] = []
        seq = head.last_seq
        for payload, events, raw_bytes in frames:
            seq += 1
            pieces += encode_frame(payload, seq, events, raw_bytes, now)
        try:
            written = os.pwritev(fd, pieces, head.active_end)
            if written != sum(len(p) for p in pieces):
                raise OSError(errno.EIO, "short write to the event log")
            os.fdatasync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, head.active_end)
            except OSError:
                pass  # the next writer finds the size off and recovers
            raise
        moved = head.moved(active_end=head.active_end + written, last_seq=seq,
                           events_total=head.events_total + sum(f[1] for f in frames),
                           raw_bytes_total=head.raw_bytes_total + sum(f[2] for f in frames))
        write_head(self._head_fd(), moved)
        return moved

    def roll(self, head: Head) -> Head:
        """Seal the active segment and start the next one (under :meth:`locked`)."""
        first = head.last_seq + 1
        fd = os.open(self._path(first), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        # The name must outlive a power loss before any frame is acked in it;
        # the head need not (recovery walks on to the following segment).
        fsync_path(self.directory)
        self._set_active(first, fd)
        moved = head.moved(active_first_seq=first, active_end=0)
        write_head(self._head_fd(), moved)
        return moved

    def set_head(self, head: Head, *, sync: bool = False) -> None:
        """Rewrite the head (under :meth:`locked`): a commit's offset, the deleted mark."""
        write_head(self._head_fd(), head, sync=sync)

    # -- recovery --------------------------------------------------------------

    def recover(self, head: Head | None) -> Head:
        """Bring the log back to its last whole frame, from ``head`` on (under the lock).

        Walks the active segment and any segment after it, checking every
        frame's checksums and sequence number; keeps what holds, cuts the rest
        (logged), syncs, and writes a head that says so.
        """
        present = segment_seqs(self.directory)
        base = head or Head()
        first = base.active_first_seq or (present[0] if present else 0)
        if first == 0 or first not in present:
            first = next((s for s in present if s >= first), 0) if present else 0
        if first == 0:  # no segment (or the head's is gone): the next append starts one
            base = base.moved(active_first_seq=0, active_end=0)
            write_head(self._head_fd(), base, sync=True)
            return base
        start, expect = 0, first
        if head is not None and first == head.active_first_seq:
            size = os.stat(self._path(first)).st_size
            if size >= head.active_end:  # a tail after the head: check it from there
                start, expect = head.active_end, head.last_seq + 1
        last, end, dropped = expect - 1, start, 0
        events, raw_bytes = base.events_total, base.raw_bytes_total
        while True:
            fd = self._active(first)
            assert fd is not None
            size = os.fstat(fd).st_size
            for frame in scan_frames(fd, start, size, verify=True, expect_seq=expect):
                last, end, expect = frame.last_seq, frame.end, frame.last_seq + 1
                if last > base.last_seq:  # synced after the head was: not counted yet
                    events, raw_bytes = events + frame.events, raw_bytes + frame.raw_bytes
            if end < size:
                os.ftruncate(fd, end)
                dropped += size - end
            os.fdatasync(fd)
            if end < size or (last + 1) not in present or last + 1 == first:
                break
            first, start, end = last + 1, 0, 0
        for stray in (s for s in present if s > first):
            dropped += os.stat(self._path(stray)).st_size
            os.remove(self._path(stray))
        if dropped:
            self.dropped_bytes += dropped
            _log.warning("event log %s: dropped a torn tail of %d bytes after sequence %d "
                         "(segment %d ends at byte %d); nothing before it was lost",
                         self.directory, dropped, last, first, end)
        recovered = base.moved(active_first_seq=first, active_end=end, last_seq=last,
                               events_total=events, raw_bytes_total=raw_bytes)
        write_head(self._head_fd(), recovered, sync=True)
        fsync_path(self.directory)
        return recovered

    # -- segment files ---------------------------------------------------------

    def _path(self, first_seq: int) -> str:
        return os.path.join(self.directory, segment_name(first_seq))

    def _active(self, first_seq: int) -> int | None:
        if self._active_fd is None or self._active_first != first_seq:
            try:
                fd = os.open(self._path(first_seq), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            self._set_active(first_seq, fd)
        return self._active_fd

    def _set_active(self, first_seq: int, fd: int) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_fd, self._active_first = fd, first_seq

    def sealed_segments(self, head: Head) -> list[tuple[int, int, str]]:
        """The segments before the head's: (first seq, last seq, path), oldest first."""
        firsts = segment_seqs(self.directory)
        return [(first, following - 1, self._path(first))
                for first, following in itertools.pairwise(firsts)
                if following <= head.active_first_seq]

    def remove_segments(self, firsts: Sequence[int]) -> None:
        """Delete sealed segments (released; readers holding a map keep their pages)."""
        for first in firsts:
            remove_file(self._path(first))

    def close(self) -> None:
        with self._lock:
            if self._active_fd is not None and self._pid == os.getpid():
                os.close(self._active_fd)
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = self._active_fd = None
            self._active_first = 0

