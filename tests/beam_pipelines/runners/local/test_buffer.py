"""The durable buffer: ordered frames, group commit, ranges, dead letters, release."""

from __future__ import annotations

import os
import threading
from typing import Any

import pyarrow as pa
import pytest

from beam_pipelines.errors import NotFoundError, Unavailable
from beam_pipelines.model.definition import Retention
from beam_pipelines.runners.local import log as log_module
from beam_pipelines.runners.local.buffer import EventBuffer, log_directory
from beam_pipelines.runners.local.segments import segment_seqs

SCHEMA = pa.schema([("n", pa.int64())])


def _table(first: int, count: int) -> pa.Table:
    return pa.table({"n": pa.array(range(first, first + count), pa.int64())})


def _append(buffer: EventBuffer, table: pa.Table) -> int:
    """Append events (never none) and return the frame's sequence number."""
    seq = buffer.append(table)
    assert seq is not None
    return seq


def _segments(buffer: EventBuffer) -> list[int]:
    return segment_seqs(log_directory(buffer.path))


def test_frames_get_increasing_sequence_numbers_and_read_back_in_order(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    seqs = [_append(buffer, _table(i * 10, 10)) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert buffer.read_range(seqs[0], seqs[3], SCHEMA).column("n").to_pylist() == \
        list(range(10, 40))
    backlog = buffer.backlog(0)
    assert (backlog.last_seq, backlog.events) == (seqs[-1], 50)
    # A limited backlog takes whole frames, and at least one.
    assert buffer.backlog(0, max_events=25).events == 20
    assert buffer.backlog(0, max_events=1).events == 10
    buffer.release(0, seqs[1], committed_at=0.0)
    assert buffer.backlog(0).events == 30
    assert buffer.totals() == {"events_in": 50, "bytes_in": buffer.totals()["bytes_in"],
                               "events_rejected": 0}


def test_release_deletes_whole_committed_segments_and_keeps_the_counts(
        tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(log_module, "SEGMENT_BYTES", 2048)  # a few frames per segment
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    seqs = [_append(buffer, _table(i * 20, 20)) for i in range(12)]
    assert len(_segments(buffer)) >= 3
    buffer.release(0, seqs[7], committed_at=100.0)
    # Every segment left holds an uncommitted frame; none of the committed ones is read.
    assert all(first > seqs[0] for first in _segments(buffer))
    assert buffer.backlog(0).events == 80
    assert buffer.read_range(seqs[7], seqs[-1], SCHEMA).column("n").to_pylist() == \
        list(range(160, 240))
    assert buffer.totals()["events_in"] == 240
    assert buffer.latency_percentiles(since=0.0)["p50"] is not None
    # Everything committed: the active segment is sealed and goes too.
    buffer.release(seqs[7], seqs[-1], committed_at=100.0)
    assert buffer.backlog(0).events == 0
    assert _segments(buffer) == [seqs[-1] + 1]
    assert buffer.totals()["events_in"] == 240
    # Monitor's count outlives the files, and counts nothing twice.
    assert buffer.events_since(0.0) == EventBuffer(buffer.path).events_since(0.0) == 240
    assert _append(buffer, _table(0, 1)) == seqs[-1] + 1


def test_retention_keeps_committed_segments_until_they_are_past_it(
        tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(log_module, "SEGMENT_BYTES", 2048)
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    seqs = [_append(buffer, _table(i * 20, 20)) for i in range(10)]
    kept = Retention(seconds=3600)
    buffer.release(0, seqs[-1], committed_at=1.0, retention=kept)
    assert _segments(buffer)[0] == 1  # all still there, readable, but no longer backlog
    assert buffer.backlog(0).events == 0
    assert buffer.read_range(0, seqs[-1], SCHEMA).column("n").to_pylist() == list(range(200))
    newest = max(f for f, _ in buffer.ingested_times(0, seqs[-1]))
    assert buffer.expire(kept, now=newest + 60) == 0
    # By size: only the newest segments that fit stay.
    assert buffer.expire(Retention(seconds=3600, bytes=3000), now=newest + 60) > 0
    left = _segments(buffer)
    assert left[0] > 1 and len(left) >= 2
    # By age: every sealed segment goes; the (empty) active one stays.
    assert buffer.expire(kept, now=newest + 3601) > 0
    assert _segments(buffer) == [seqs[-1] + 1]
    assert buffer.totals()["events_in"] == 200


def test_concurrent_appends_share_commits_and_lose_nothing(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    results: list[int | None] = []

    def writer(k: int) -> None:
        for j in range(20):
            results.append(buffer.append(_table((k * 20 + j) * 5, 5)))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for r in results if r is not None) == list(range(1, 161))
    table = buffer.read_range(0, 160, SCHEMA)
    assert sorted(table.column("n").to_pylist()) == list(range(800))
    # A second handle (another process in production) sees all of it.
    other = EventBuffer(buffer.path)
    assert other.totals()["events_in"] == 800
    assert other.backlog(0).last_seq == 160


def test_rejections_only_are_kept_as_dead_letters(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    assert buffer.append(SCHEMA.empty_table(), [(3, "parse_failure", "not JSON", "{x")]) is None
    assert buffer.totals()["events_rejected"] == 1
    letters = buffer.dead_letters()
    assert letters[0]["index"] == 3 and letters[0]["record"] == "{x"
    assert buffer.backlog(0).events == 0


def test_recent_shows_the_newest_uncommitted_events(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    seqs = [_append(buffer, _table(i * 10, 10)) for i in range(4)]
    assert buffer.recent(15, SCHEMA).column("n").to_pylist() == list(range(25, 40))
    buffer.release(0, seqs[-1], committed_at=0.0)
    assert buffer.recent(15, SCHEMA).num_rows == 0


def test_a_deleted_buffer_refuses_appends_from_every_handle(tmp_path: Any) -> None:
    first = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    second = EventBuffer(first.path)  # another process's handle
    assert second.append(_table(0, 3)) is not None
    first.mark_deleted()
    with pytest.raises(NotFoundError):
        second.append(_table(3, 3))
    assert second.totals()["events_in"] == 3


def test_a_handle_open_across_a_delete_and_its_files_removal_is_told_not_found(
        tmp_path: Any) -> None:
    """An ingest holding a handle while the delete marks and then removes the log
    (another API worker): 404, the lookup the service retries, never a 503 from
    recovering a log whose segments are gone (seen: a name reused after delete)."""
    first = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    assert first.append(_table(0, 3)) is not None
    used, fresh = EventBuffer(first.path), EventBuffer(first.path)
    assert used.append(_table(3, 3)) is not None  # its log files are open; fresh's are not
    first.mark_deleted()
    first.destroy()
    for handle in (used, fresh):
        with pytest.raises(NotFoundError):
            handle.append(_table(6, 3))


def test_opening_a_missing_buffer_never_creates_one(tmp_path: Any) -> None:
    path = str(tmp_path / "gone.sqlite")
    with pytest.raises(NotFoundError):
        EventBuffer(path)
    assert not os.path.exists(path) and not os.path.exists(log_directory(path))
    created = EventBuffer(path, create=True)
    created.destroy()
    with pytest.raises(NotFoundError):
        created.append(_table(0, 1))
    assert not os.path.exists(path) and not os.path.exists(log_directory(path))


def test_a_full_backlog_refuses_whole_requests_until_a_commit_drains_it(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True, max_backlog_bytes=4096)
    accepted = []
    with pytest.raises(Unavailable) as refused:
        for i in range(100):
            accepted.append(buffer.append(_table(i * 10, 10), [(0, "bad", "rejected", "{}")]))
    assert refused.value.details["reason"] == "backlog_full"
    # Nothing of the refused request was kept: neither its events nor its dead letter.
    assert buffer.totals()["events_in"] == 10 * len(accepted)
    assert buffer.totals()["events_rejected"] == len(accepted)
    assert buffer.read_range(0, len(accepted), SCHEMA).column("n").to_pylist() == \
        list(range(10 * len(accepted)))
    buffer.release(0, len(accepted), committed_at=0.0)
    assert buffer.append(_table(9000, 10)) == len(accepted) + 1


def test_a_disk_under_the_free_space_floor_refuses_appends(tmp_path: Any) -> None:
    stat = os.statvfs(str(tmp_path))
    free = stat.f_bavail * stat.f_frsize
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True, min_free_disk_bytes=free * 2)
    with pytest.raises(Unavailable) as refused:
        buffer.append(_table(0, 10))
    assert refused.value.details == {"reason": "disk_full"}
    assert buffer.backlog(0).events == 0 and buffer.totals()["events_in"] == 0


def test_handles_follow_a_release_by_another_process(tmp_path: Any) -> None:
    writer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    planner = EventBuffer(writer.path)
    seqs = [_append(writer, _table(i, 1)) for i in range(5)]
    assert planner.backlog(0).last_seq == seqs[-1]
    releaser = EventBuffer(writer.path)  # the job manager's release thread
    releaser.release(0, seqs[-1], committed_at=1.0)
    releaser.close()
    assert _segments(writer) == [seqs[-1] + 1]  # the committed segment is gone
    assert _append(writer, _table(5, 2)) == seqs[-1] + 1
    for handle in (planner, writer):
        backlog = handle.backlog(seqs[-1])
        assert (backlog.last_seq, backlog.events) == (seqs[-1] + 1, 2)
        assert handle.totals()["events_in"] == 7
    assert planner.read_range(seqs[-1], seqs[-1] + 1, SCHEMA).column("n").to_pylist() == [5, 6]
