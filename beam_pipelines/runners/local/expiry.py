"""Which of a log's segments may go: committed, sealed, and past retention.

Judged from the files alone, so no process needs an index of everything a
pipeline retains: a segment's last sequence number is the next segment's
first minus one, its age is its file's (the time its last frame was
written), its size the file's. Only the segments that go have their frame
headers read, for the counts the ledger keeps of them.
"""

from __future__ import annotations

import os

from beam_pipelines.model.definition import Retention
from beam_pipelines.runners.local.ledger import SegmentSummary
from beam_pipelines.runners.local.log import SegmentLog
from beam_pipelines.runners.local.segments import Head, scan_frames

__all__ = ["doomed_segments"]


def doomed_segments(log: SegmentLog, head: Head, retention: Retention,
                    now: float) -> list[tuple[SegmentSummary, dict[int, int]]]:
    """The oldest sealed, committed segments that ``retention`` no longer keeps,
    each with its counts and its events per ingest second.

    Until committed (the default): all of them. Otherwise the oldest go while
    the committed segments are more than ``retention.bytes`` together, or
    older than ``retention.seconds``.
    """
    kept: list[tuple[int, int, str, os.stat_result]] = []
    for first, last, path in log.sealed_segments(head):
        if last > head.committed_seq:
            break
        try:
            kept.append((first, last, path, os.stat(path)))
        except FileNotFoundError:
            continue  # another process deleted it just now
    retained = sum(k[3].st_size for k in kept)
    doomed: list[tuple[SegmentSummary, dict[int, int]]] = []
    for first, last, path, stat in kept:
        if not retention.until_committed and not (
                (retention.seconds is not None and now - stat.st_mtime > retention.seconds)
                or (retention.bytes is not None and retained > retention.bytes)):
            break
        retained -= stat.st_size
        try:
            doomed.append(_summary(first, last, path, stat.st_size))
        except FileNotFoundError:
            continue  # another process deleted (and counted) it just now
    return doomed


def _summary(first: int, last: int, path: str,
             size: int) -> tuple[SegmentSummary, dict[int, int]]:
    """A segment about to go: its counts, and its events per ingest second
    (from its frame headers, so monitor's figures outlive the file)."""
    events = raw_bytes = 0
    seconds: dict[int, int] = {}
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for frame in scan_frames(fd, 0, size):
            events += frame.events
            raw_bytes += frame.raw_bytes
            second = int(frame.ingested_at)
            seconds[second] = seconds.get(second, 0) + frame.events
    finally:
        os.close(fd)
    return (first, last, events, raw_bytes, size), seconds
