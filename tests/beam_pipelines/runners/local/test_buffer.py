"""The durable buffer: ordered rows, group commit, ranges, dead letters."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from beam_pipelines.runners.local.buffer import (
    CHECKPOINT_EVERY_BYTES,
    RELEASE_ROWS_PER_TRANSACTION,
    EventBuffer,
)
from tests.live import wait_for

SCHEMA = pa.schema([("n", pa.int64())])


def _table(first: int, count: int) -> pa.Table:
    return pa.table({"n": pa.array(range(first, first + count), pa.int64())})


def _append(buffer: EventBuffer, table: pa.Table) -> int:
    """Append events (never none) and return the row's sequence number."""
    seq = buffer.append(table)
    assert seq is not None
    return seq


def test_rows_get_increasing_sequence_numbers_and_read_back_in_order(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    seqs = [_append(buffer, _table(i * 10, 10)) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert buffer.read_range(seqs[0], seqs[3], SCHEMA).column("n").to_pylist() == \
        list(range(10, 40))
    backlog = buffer.backlog(0)
    assert (backlog.last_seq, backlog.events) == (seqs[-1], 50)
    # A limited backlog takes whole rows, and at least one.
    assert buffer.backlog(0, max_events=25).events == 20
    assert buffer.backlog(0, max_events=1).events == 10
    buffer.release(0, seqs[1], committed_at=0.0)
    assert buffer.backlog(0).events == 30
    assert buffer.totals() == {"events_in": 50, "bytes_in": buffer.totals()["bytes_in"],
                               "events_rejected": 0}


def test_release_drops_every_row_through_the_commit_across_many_transactions(
        tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    rows = 3 * RELEASE_ROWS_PER_TRANSACTION + 1
    seqs = [_append(buffer, _table(i, 1)) for i in range(rows + 2)]
    buffer.release(0, seqs[rows - 1], committed_at=100.0)
    remaining = buffer.backlog(0)
    assert (remaining.events, remaining.last_seq) == (2, seqs[-1])
    assert buffer.read_range(0, seqs[-1], SCHEMA).column("n").to_pylist() == [rows, rows + 1]
    # Every released row's latency was recorded before it went.
    assert buffer.latency_percentiles(since=0.0)["p50"] is not None


def test_wal_is_checkpointed_by_the_appending_process(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    wide = pa.table({"s": pa.array(["x" * 1000] * 1000)})  # ~1 MB per row
    appends = CHECKPOINT_EVERY_BYTES // wide.nbytes + 1
    for _ in range(appends):
        buffer.append(wide)
    # Nothing else checkpoints this file: the database itself only grows
    # once the checkpoint thread has copied the WAL's pages into it.
    wait_for(lambda: (tmp_path / "b.sqlite").stat().st_size >= appends * wide.nbytes,
             timeout=10)
    buffer.close()


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
    assert len(results) == 160 and len(set(results)) == 160
    table = buffer.read_range(0, max(r for r in results if r is not None), SCHEMA)
    assert sorted(table.column("n").to_pylist()) == list(range(800))
    # A second handle (another process in production) sees all of it.
    other = EventBuffer(buffer.path)
    assert other.totals()["events_in"] == 800


def test_rejections_only_are_kept_as_dead_letters(tmp_path: Any) -> None:
    buffer = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    assert buffer.append(SCHEMA.empty_table(), [(3, "parse_failure", "not JSON", "{x")]) is None
    assert buffer.totals()["events_rejected"] == 1
    letters = buffer.dead_letters()
    assert letters[0]["index"] == 3 and letters[0]["record"] == "{x"
    assert buffer.backlog(0).events == 0


def test_a_deleted_buffer_refuses_appends_from_every_handle(tmp_path: Any) -> None:
    from beam_pipelines.errors import NotFoundError

    first = EventBuffer(str(tmp_path / "b.sqlite"), create=True)
    second = EventBuffer(first.path)  # another process's handle
    assert second.append(_table(0, 3)) is not None
    first.mark_deleted()
    try:
        second.append(_table(3, 3))
    except NotFoundError:
        pass
    else:
        raise AssertionError("an append after delete was acknowledged")
    assert second.totals()["events_in"] == 3


def test_opening_a_missing_buffer_never_creates_one(tmp_path: Any) -> None:
    import os

    import pytest

    from beam_pipelines.errors import NotFoundError

    path = str(tmp_path / "gone.sqlite")
    with pytest.raises(NotFoundError):
        EventBuffer(path)
    assert not os.path.exists(path)
    created = EventBuffer(path, create=True)
    created.destroy()
    with pytest.raises(NotFoundError):
        created.append(_table(0, 1))
    assert not os.path.exists(path)
