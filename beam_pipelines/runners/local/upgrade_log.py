"""The log half of an upgrade (:mod:`.upgrade`): old buffer rows written as frames.

Each row of the old ``batches`` table becomes one frame with the same
sequence number, event count, raw bytes and ingest time; its Arrow IPC
stream is the payload unchanged (an old row is a self-contained stream, as
a frame's payload is). Segments roll at :data:`.log.SEGMENT_BYTES` as the
writer's do. Everything is synced and read back (checksums, sequence
numbers, event counts) before the head is written: the caller renames the
directory into place only after this returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from beam_pipelines.errors import StorageError
from beam_pipelines.runners.local.log import SEGMENT_BYTES
from beam_pipelines.runners.local.segments import (
    Head,
    encode_frame,
    fsync_path,
    scan_frames,
    segment_name,
    write_head,
)

__all__ = ["StagedLog", "stage_log"]

# (seq, events, raw bytes, ingested_at, Arrow IPC stream) of one old row
OldRow = tuple[int, int, int, float, bytes]


@dataclass(frozen=True)
class StagedLog:
    requests: int
    events: int
    first_seq: int  # 0: no row
    last_seq: int
    deleted: bool


def stage_log(directory: str, rows: Iterable[OldRow], *, committed_seq: int,
              events_total: int, raw_bytes_total: int, deleted: bool) -> StagedLog:
    """Write ``rows`` (in seq order, all after ``committed_seq``) as a new log in
    ``directory``; its head keeps the old totals and the deleted mark."""
    os.makedirs(directory)
    segments: list[tuple[int, int, int, int]] = []  # first seq, last seq, bytes, events
    fd: int | None = None
    seq = committed_seq
    requests = events = 0
    try:
        for row_seq, row_events, raw_bytes, ingested_at, data in rows:
            if row_seq != seq + 1:
                raise StorageError(f"the old event buffer in {directory} skips from seq {seq} "
                                   f"to {row_seq}: it was not upgraded (nothing was changed)")
            seq = row_seq
            if fd is None or segments[-1][2] >= SEGMENT_BYTES:
                if fd is not None:
                    _close_synced(fd)
                fd = os.open(os.path.join(directory, segment_name(seq)),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                segments.append((seq, seq - 1, 0, 0))
            pieces = encode_frame(data, seq, row_events, raw_bytes, ingested_at)
            written = os.pwritev(fd, pieces, segments[-1][2])
            if written != sum(len(p) for p in pieces):
                raise OSError("short write while upgrading the event buffer")
            first, _, size, n = segments[-1]
            segments[-1] = (first, seq, size + written, n + row_events)
            requests += 1
            events += row_events
    finally:
        if fd is not None:
            _close_synced(fd)
    _check(directory, segments)
    head = Head(deleted=deleted, last_seq=seq, committed_seq=committed_seq,
                events_total=events_total, raw_bytes_total=raw_bytes_total)
    if segments:
        head = head.moved(active_first_seq=segments[-1][0], active_end=segments[-1][2])
    fd = os.open(os.path.join(directory, "HEAD"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        write_head(fd, head, sync=True)
    finally:
        os.close(fd)
    fsync_path(directory)
    return StagedLog(requests, events, committed_seq + 1 if requests else 0, seq, deleted)


def _check(directory: str, segments: list[tuple[int, int, int, int]]) -> None:
    """Read every written frame back: whole, in sequence, with the counts written."""
    for first, last, size, events in segments:
        fd = os.open(os.path.join(directory, segment_name(first)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            frames = list(scan_frames(fd, 0, os.fstat(fd).st_size, verify=True,
                                      expect_seq=first))
        finally:
            os.close(fd)
        if (len(frames) != last - first + 1 or (frames and frames[-1].end != size)
                or sum(f.events for f in frames) != events):
            raise StorageError(f"the upgraded event log in {directory} did not read back as "
                               "written: the old buffer was kept")


def _close_synced(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

