"""The on-disk format of the event log: framed Arrow IPC batches in segment files.

A segment is a file of frames. A frame is one accepted request: a 64-byte
header, then the request's events as a self-contained Arrow IPC stream,
padded to 8 bytes so that every payload starts aligned and reads back
zero-copy from a memory map. The header carries the payload's length and
CRC-32, the frame's sequence range, event count, raw request bytes and ingest
time, and a CRC-32 of its own, so a torn or half-written frame is told from
a whole one without trusting anything after it.

A segment is named by the first sequence number it holds (20 digits), so
the log's files sort in sequence order and the segment that follows one
ending at ``s`` is named ``s + 1``.

The log's head (``HEAD``) is a 64-byte record: where the durable end of the
log is (active segment, byte offset, last sequence number), how far epochs
have committed, the events and bytes ever appended, and whether the
pipeline was deleted. Writers rewrite it
under the log's lock after each synced commit; readers never look past it.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.ipc as ipc

__all__ = ["FRAME_HEADER_BYTES", "Frame", "Head", "SEGMENT_SUFFIX", "encode_frame",
           "frame_payload", "fsync_path", "parse_frame_header", "read_head", "scan_frames",
           "segment_name", "segment_seqs", "to_ipc", "write_head"]

_FRAME = struct.Struct("<4sIIIQQQQd")  # magic, header crc, length, payload crc, seqs, events...
FRAME_HEADER_BYTES = 64
_FRAME_MAGIC = b"PDOF"
_HEAD = struct.Struct("<4sIIIQQQQQQ")
_HEAD_MAGIC = b"PDOH"
SEGMENT_SUFFIX = ".arrows"
_PAD = b"\0" * 8


@dataclass(frozen=True, slots=True)  # one per request in every process's index
class Frame:
    """One frame's header, and where it lies in its segment."""

    first_seq: int
    last_seq: int
    events: int
    raw_bytes: int
    ingested_at: float
    length: int  # payload bytes
    payload_crc: int
    offset: int  # of the header, in its segment

    @property
    def size(self) -> int:
        """Bytes the frame takes in the file: header, payload, padding."""
        return FRAME_HEADER_BYTES + _padded(self.length)

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Head:
    """The log's durable end and state, as its ``HEAD`` record says."""

    deleted: bool = False
    active_first_seq: int = 0  # 0: no segment yet
    active_end: int = 0
    last_seq: int = 0
    committed_seq: int = 0
    # Everything ever appended (for ``totals``, so no process indexes the whole log)
    events_total: int = 0
    raw_bytes_total: int = 0

    def moved(self, **changes: object) -> Head:
        return replace(self, **changes)  # type: ignore[arg-type]


def _padded(n: int) -> int:
    return (n + 7) & ~7


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def segment_seqs(directory: str) -> list[int]:
    """The first sequence numbers of the segment files in ``directory``, in order."""
    return sorted(int(name[:-len(SEGMENT_SUFFIX)]) for name in os.listdir(directory)
                  if name.endswith(SEGMENT_SUFFIX) and name[:-len(SEGMENT_SUFFIX)].isdigit())


def to_ipc(table: pa.Table) -> pa.Buffer:
    """The table as an IPC stream, in Arrow's own buffer: written to the
    segment from there (``pwritev`` takes any buffer), never copied to bytes."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def encode_frame(payload: pa.Buffer | bytes, seq: int, events: int, raw_bytes: int,
                 ingested_at: float) -> list[pa.Buffer | bytes]:
    """A frame as the pieces ``os.pwritev`` writes: header, payload, padding."""
    rest = _FRAME.pack(_FRAME_MAGIC, 0, len(payload), zlib.crc32(payload), seq, seq, events,
                       raw_bytes, ingested_at)[8:]
    header = _FRAME_MAGIC + struct.pack("<I", zlib.crc32(rest)) + rest
    header += b"\0" * (FRAME_HEADER_BYTES - len(header))
    pad = _padded(len(payload)) - len(payload)
    return [header, payload, _PAD[:pad]] if pad else [header, payload]


def parse_frame_header(raw: bytes, offset: int) -> Frame | None:
    """The frame whose header is ``raw`` (read at ``offset``), or None if it is not one."""
    if len(raw) < _FRAME.size or raw[:4] != _FRAME_MAGIC:
        return None
    (_, crc, length, payload_crc, first, last, events, raw_bytes,
     ingested_at) = _FRAME.unpack_from(raw)
    if zlib.crc32(raw[8:_FRAME.size]) != crc:
        return None
    return Frame(first, last, events, raw_bytes, ingested_at, length, payload_crc, offset)


def scan_frames(fd: int, start: int, end: int, *, verify: bool = False,
                expect_seq: int | None = None) -> Iterator[Frame]:
    """The whole frames of a segment between byte ``start`` and ``end``, in order.

    Stops at the first frame that is cut off by ``end``, whose header does not
    check out, that breaks the sequence (``expect_seq``: the first one's
    number), or, with ``verify``, whose payload's checksum is wrong: what
    follows a torn frame is not trusted.
    """
    offset = start
    while offset + FRAME_HEADER_BYTES <= end:
        frame = parse_frame_header(os.pread(fd, FRAME_HEADER_BYTES, offset), offset)
        if frame is None or frame.end > end:
            return
        if expect_seq is not None:
            if frame.first_seq != expect_seq:
                return
            expect_seq = frame.last_seq + 1
        if verify and zlib.crc32(os.pread(fd, frame.length, offset + FRAME_HEADER_BYTES)) \
                != frame.payload_crc:
            return
        yield frame
        offset = frame.end


def frame_payload(segment: pa.MemoryMappedFile, frame: Frame) -> pa.Table:
    """A frame's events, zero-copy from the segment's memory map, checksum verified."""
    # read_buffer slices the map (read_at would copy into bytes); the slice keeps
    # the mapping alive after the file object is closed.
    segment.seek(frame.offset + FRAME_HEADER_BYTES)
    data = segment.read_buffer(frame.length)
    if zlib.crc32(memoryview(data)) != frame.payload_crc:
        raise OSError(f"checksum mismatch in frame {frame.first_seq} of the event log")
    return ipc.open_stream(data).read_all()


def read_head(fd: int) -> Head | None:
    """The ``HEAD`` record, or None while it does not check out.

    A reader may catch a writer's 64-byte rewrite half done; the caller reads again.
    """
    raw = os.pread(fd, _HEAD.size, 0)
    if len(raw) < _HEAD.size or raw[:4] != _HEAD_MAGIC:
        return None
    _, crc, _version, deleted, active, end, last, committed, events, raw_bytes = \
        _HEAD.unpack(raw)
    if zlib.crc32(raw[8:]) != crc:
        return None
    return Head(bool(deleted), active, end, last, committed, events, raw_bytes)


def write_head(fd: int, head: Head, *, sync: bool = False) -> None:
    rest = _HEAD.pack(_HEAD_MAGIC, 0, 1, int(head.deleted), head.active_first_seq,
                      head.active_end, head.last_seq, head.committed_seq, head.events_total,
                      head.raw_bytes_total)[8:]
    os.pwrite(fd, _HEAD_MAGIC + struct.pack("<I", zlib.crc32(rest)) + rest, 0)
    if sync:
        os.fsync(fd)


def fsync_path(path: str) -> None:
    """fsync a file or a directory (a directory: the names created, renamed or
    removed in it) by path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
