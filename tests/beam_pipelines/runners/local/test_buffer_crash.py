"""The event log across crashes: ``kill -9`` of appending processes, torn tails.

Every acknowledged event must be in the log exactly once afterwards; a
request that got no answer may be there once or not at all, never twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from beam_pipelines.runners.local.buffer import EventBuffer, log_directory
from beam_pipelines.runners.local.segments import segment_name

SCHEMA = pa.schema([("n", pa.int64()), ("pad", pa.string())])
ROWS = 2000

# An ingest process: a few threads appending at once (group commits), each
# printing the first number of a request once append() returned (the ack).
_APPENDER = """
import sys, threading
import pyarrow as pa
from beam_pipelines.runners.local.buffer import EventBuffer
buffer = EventBuffer(sys.argv[1])
rows, base = int(sys.argv[2]), int(sys.argv[3])
out = threading.Lock()
def run(k):
    first = base + k * 10_000_000
    for _ in range(100_000):
        buffer.append(pa.table({"n": pa.array(range(first, first + rows), pa.int64()),
                                "pad": ["x" * 40] * rows}))
        with out:
            print(first, flush=True)
        first += rows
threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
for t in threads: t.start()
for t in threads: t.join()
"""


def _table(first: int, count: int) -> pa.Table:
    return pa.table({"n": pa.array(range(first, first + count), pa.int64()),
                     "pad": ["x" * 40] * count})


def _filled(path: str, frames: int) -> EventBuffer:
    """A new buffer holding ``frames`` appends of 100 events: 0-99, 100-199..."""
    buffer = EventBuffer(path, create=True)
    for i in range(frames):
        buffer.append(_table(i * 100, 100))
    return buffer


def _tear_last_frame(path: str) -> None:
    """What a crash in the middle of a write leaves: the last frame loses its end."""
    segment = os.path.join(log_directory(path), segment_name(1))
    os.truncate(segment, os.path.getsize(segment) - 7)


def _everything(path: str) -> Counter[int]:
    buffer = EventBuffer(path)
    try:
        buffer.recover()
        last = buffer.backlog(0).last_seq
        return Counter(buffer.read_range(0, last, SCHEMA).column("n").to_pylist())
    finally:
        buffer.close()


def test_kill_9_of_appending_processes_during_group_commits_loses_no_acknowledged_event(
        tmp_path: Any) -> None:
    path = str(tmp_path / "b.sqlite")
    EventBuffer(path, create=True).close()
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, path, str(ROWS),
                               str(p * 1_000_000_000)], stdout=subprocess.PIPE, env=env, text=True)
             for p in range(2)]
    acked: list[int] = []

    def collect(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line))

    readers = [threading.Thread(target=collect, args=(p,)) for p in procs]
    for r in readers:
        r.start()
    deadline = time.monotonic() + 180
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(30)
    for r in readers:
        r.join(30)
    assert len(acked) >= 150, "the appenders did not get going"

    written = _everything(path)
    assert max(written.values()) == 1, "an event is in the log twice"
    lost = [first for first in acked if any(written[n] != 1 for n in (first, first + ROWS - 1))]
    assert not lost, f"{len(lost)} acknowledged requests lost"
    # Whole requests only: an unacknowledged one is there entirely or not at all.
    starts = Counter(n - n % ROWS for n in written)
    assert set(starts.values()) == {ROWS}
    # And the log goes on from there.
    buffer = EventBuffer(path)
    seq = buffer.append(_table(-ROWS, ROWS))
    assert seq == buffer.backlog(0).last_seq and sum(_everything(path).values()) == \
        sum(written.values()) + ROWS


def test_a_torn_last_frame_is_cut_and_logged_and_everything_before_it_kept(
        tmp_path: Any, caplog: Any) -> None:
    path = str(tmp_path / "b.sqlite")
    _filled(path, 5).close()
    _tear_last_frame(path)

    with caplog.at_level(logging.WARNING):
        assert EventBuffer(path).recover() > 0
        assert sorted(_everything(path)) == list(range(400))
    assert any("torn tail" in r.getMessage() for r in caplog.records)
    buffer = EventBuffer(path)
    assert buffer.append(_table(1000, 10)) == 5
    assert buffer.read_range(0, 5, SCHEMA).column("n").to_pylist() == \
        list(range(400)) + list(range(1000, 1010))


def test_a_half_written_frame_after_the_head_is_cut_before_the_next_commit(
        tmp_path: Any, caplog: Any) -> None:
    path = str(tmp_path / "b.sqlite")
    buffer = _filled(path, 3)
    with open(os.path.join(log_directory(path), segment_name(1)), "ab") as f:
        f.write(b"PDOF" + os.urandom(300))  # a writer killed in the middle of its pwritev
    other = EventBuffer(path)  # another process appends next
    with caplog.at_level(logging.WARNING):
        assert other.append(_table(300, 100)) == 4
    assert any("torn tail" in r.getMessage() for r in caplog.records)
    assert buffer.read_range(0, 4, SCHEMA).column("n").to_pylist() == list(range(400))


def test_a_head_that_lags_the_synced_frames_is_caught_up_by_recovery(
        tmp_path: Any, monkeypatch: Any) -> None:
    # The head is rewritten without a sync: after a power loss it may say less
    # than the segments hold (even a segment less). Recovery walks on from it.
    from beam_pipelines.runners.local import log as log_module

    monkeypatch.setattr(log_module, "SEGMENT_BYTES", 4096)
    path = str(tmp_path / "b.sqlite")
    head = os.path.join(log_directory(path), "HEAD")
    buffer = EventBuffer(path, create=True)
    buffer.append(_table(0, 100))
    with open(head, "rb") as f:
        stale = f.read()
    for i in range(1, 6):
        buffer.append(_table(i * 100, 100))
    buffer.close()
    assert len(os.listdir(log_directory(path))) > 2  # the acked frames span segments
    with open(head, "r+b") as f:
        f.write(stale)

    reader = EventBuffer(path)
    assert reader.backlog(0).events == 100  # never past the head
    reader.recover()
    assert reader.backlog(0).events == 600
    assert reader.read_range(0, 6, SCHEMA).column("n").to_pylist() == list(range(600))
    assert reader.append(_table(600, 1)) == 7
    assert reader.totals()["events_in"] == 601  # the frames recovery found are counted too


def test_a_corrupted_frame_fails_the_read_instead_of_feeding_an_epoch(tmp_path: Any) -> None:
    import pytest

    path = str(tmp_path / "b.sqlite")
    _filled(path, 3)
    segment = os.path.join(log_directory(path), segment_name(1))
    with open(segment, "r+b") as f:  # flip one byte inside the second frame's payload
        f.seek(os.path.getsize(segment) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(OSError, match="checksum"):
        EventBuffer(path).read_range(0, 3, SCHEMA)


def test_a_reader_that_indexed_frames_a_recovery_cut_starts_over(tmp_path: Any) -> None:
    path = str(tmp_path / "b.sqlite")
    writer = _filled(path, 4)
    planner = EventBuffer(path)
    assert planner.backlog(0).events == 400  # indexed all four
    _tear_last_frame(path)  # the disk lost the last one's end
    EventBuffer(path).recover()
    for i in range(4, 6):  # new frames take numbers 4 and 5
        writer.append(_table(i * 100, 100))
    assert planner.backlog(0).events == 500
    assert planner.read_range(0, 5, SCHEMA).column("n").to_pylist() == \
        list(range(300)) + list(range(400, 600))
