"""Upgrading 78d94f8's SQLite buffers (tests/fixtures/upgrade_78d94f8) to the event log.

The fixture was written by that release's real server; these tests run
today's upgrade on a copy, crash it with ``kill -9`` (``os._exit`` in a child
process) after each of its steps, run it again, and read the log back.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import select

from beam_pipelines.catalog.store import LogEntry, PipelineRow, Store, default_database_url
from beam_pipelines.errors import NotFoundError
from beam_pipelines.runners.base import DeadLetterQuery
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.runner import LocalRunner
from beam_pipelines.runners.local.upgrade import pending_upgrades, upgrade_data_dir
from beam_pipelines.settings import data_plane_settings
from tests.upgrade_fixture import FIXTURE, copy_fixture, crash_upgrade, expected, grow_old_buffer

SCHEMA = pa.schema([("seq", pa.int64()), ("payload", pa.string())])
STEPS = ["staged", "log_in_place", "old_set_aside", "ledger_in_place", "logged", "done"]



def _copy(tmp_path: Any) -> tuple[str, Store]:
    data_dir = copy_fixture(str(tmp_path / "data"))
    store = Store(default_database_url(data_dir))
    store.create_all()  # as serve does first: the catalog's own added columns
    return data_dir, store


def _ids(store: Store) -> dict[str, tuple[str, int]]:
    with store.reading() as s:
        return {name: (pid, committed) for pid, name, committed in s.execute(
            select(PipelineRow.id, PipelineRow.name, PipelineRow.committed_seq)).all()}


def _check_upgraded(data_dir: str, store: Store) -> None:
    """Every acknowledged, uncommitted event in the log once, in order; counters and
    dead letters as the old server had them; one log line each."""
    want = expected()
    for name, (pipeline_id, committed) in _ids(store).items():
        buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
        try:
            backlog = buffer.backlog(committed)
            seqs = buffer.read_range(committed, backlog.last_seq, SCHEMA).column("seq").to_pylist()
            uncommitted = [s for s in want["acked"][name] if s not in set(want["committed"][name])]
            assert seqs == uncommitted and max(Counter(seqs).values()) == 1
            assert backlog.events == len(uncommitted)
            old = want["counters"][name]
            assert buffer.totals() == {"events_in": old["events_in"], "bytes_in": old["bytes_in"],
                                       "events_rejected": old["events_rejected"]}
            letters = buffer.dead_letters(DeadLetterQuery(limit=100))
            assert len(letters) == old["events_rejected"]
            assert buffer.events_since(0) == old["events_in"]  # ledger + frames, none twice
            assert all(str(r["record"]).startswith('{"seq": "bad-') for r in letters)
        finally:
            buffer.close()
        with closing(sqlite3.connect(buffer_path(data_dir, pipeline_id))) as con:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with store.reading() as s:
            lines = s.scalars(select(LogEntry.message).where(
                LogEntry.pipeline_id == pipeline_id,
                LogEntry.message.like("event buffer upgraded%"))).all()
        assert len(lines) == 1, lines
    assert pending_upgrades(data_dir) == []
    files = [n for n in os.listdir(os.path.join(data_dir, "buffers"))
             if not n.endswith(("-wal", "-shm"))]  # an open ledger's
    assert sorted(files) == sorted(
        f"{pid}{ext}" for pid, _ in _ids(store).values() for ext in (".log", ".sqlite"))


def test_upgrade_moves_uncommitted_events_counters_dead_letters_and_says_so(tmp_path: Any,
                                                                            ) -> None:
    data_dir, store = _copy(tmp_path)
    # The catalog of 78d94f8 got today's added columns and tables (Store.create_all).
    with closing(sqlite3.connect(os.path.join(data_dir, "pipeline-do.sqlite"))) as con:
        columns = {(table, c[1]) for table in ("sql_versions", "engine_jobs")
                   for c in con.execute(f"PRAGMA table_info({table})")}
    assert {("sql_versions", "input_schema"), ("engine_jobs", "location")} <= columns
    assert len(pending_upgrades(data_dir)) == 2
    upgraded = {u.pipeline_id: u for u in upgrade_data_dir(store, data_dir)}
    _check_upgraded(data_dir, store)
    orders, _ = _ids(store)["orders"]
    # Seq 5 (planned as epoch 3, its files written, not committed) to 7; 1-4 committed.
    assert (upgraded[orders].first_seq, upgraded[orders].last_seq) == (5, 7)
    with store.reading() as s:
        line = s.scalars(select(LogEntry.message).where(
            LogEntry.pipeline_id == orders, LogEntry.message.like("event buffer%"))).one()
    assert "60 uncommitted events in 3 requests (seq 5 to 7)" in line
    assert "planned epochs kept, re-run over the same events: 3 (seq 5 to 5)" in line
    assert upgrade_data_dir(store, data_dir) == []  # once


def test_a_row_a_release_left_behind_is_not_moved_and_the_old_lock_files_go(
        tmp_path: Any) -> None:
    """A crash in the old release's row-by-row delete left committed rows: they stay out."""
    data_dir, store = _copy(tmp_path)
    orders, committed = _ids(store)["orders"]
    path = buffer_path(data_dir, orders)
    with closing(sqlite3.connect(path)) as con:
        con.execute("INSERT INTO batches (seq, events, bytes, ingested_at, data) "
                    "SELECT ?, events, bytes, ingested_at, data FROM batches WHERE seq = 5",
                    (committed,))
        con.commit()
    for pipeline_id, _ in _ids(store).values():
        open(buffer_path(data_dir, pipeline_id) + ".lock", "wb").close()
    upgrade_data_dir(store, data_dir)
    _check_upgraded(data_dir, store)


def test_the_deleted_mark_is_carried_over(tmp_path: Any) -> None:
    data_dir, store = _copy(tmp_path)
    clicks, _ = _ids(store)["clicks"]
    with closing(sqlite3.connect(buffer_path(data_dir, clicks))) as con:
        con.execute("UPDATE state SET deleted = 1")
        con.commit()
    upgrade_data_dir(store, data_dir)
    buffer = EventBuffer(buffer_path(data_dir, clicks))
    try:
        with pytest.raises(NotFoundError):
            buffer.append(pa.table({"seq": [1], "payload": ["x"]}, schema=SCHEMA))
        assert buffer.backlog(0).events == 20  # kept until the delete removes the files
    finally:
        buffer.close()


def test_new_ingest_after_the_upgrade_continues_the_sequence(tmp_path: Any) -> None:
    data_dir, store = _copy(tmp_path)
    upgrade_data_dir(store, data_dir)
    orders, _ = _ids(store)["orders"]
    buffer = EventBuffer(buffer_path(data_dir, orders))
    try:
        seq = buffer.append(pa.table({"seq": [9000], "payload": ["new"]}, schema=SCHEMA))
        assert seq == 8
        assert buffer.totals()["events_in"] == expected()["counters"]["orders"]["events_in"] + 1
        assert buffer.read_range(7, 8, SCHEMA).column("seq").to_pylist() == [9000]
    finally:
        buffer.close()


@pytest.mark.parametrize("nth", [1, 2], ids=["first-pipeline", "second-pipeline"])
@pytest.mark.parametrize("crash_at", STEPS)
def test_kill_9_after_any_step_then_restart_loses_and_duplicates_nothing(
        tmp_path: Any, crash_at: str, nth: int) -> None:
    data_dir, store = _copy(tmp_path)
    crash_upgrade(data_dir, crash_at, nth)
    upgrade_data_dir(store, data_dir)  # the restart
    _check_upgraded(data_dir, store)


def test_a_crash_while_staging_leaves_only_scratch_which_the_restart_discards(
        tmp_path: Any) -> None:
    data_dir, store = _copy(tmp_path)
    orders, _ = _ids(store)["orders"]
    base = buffer_path(data_dir, orders)
    os.makedirs(base[:-len(".sqlite")] + ".log.upgrading")
    with open(os.path.join(base[:-len(".sqlite")] + ".log.upgrading",
                           "00000000000000000005.arrows"), "wb") as f:
        f.write(b"PDOF torn")
    with open(base + ".upgrading", "wb") as f:
        f.write(b"half a ledger")
    upgrade_data_dir(store, data_dir)
    _check_upgraded(data_dir, store)


def test_an_old_buffer_with_a_gap_is_left_as_it_was_and_the_others_upgraded(
        tmp_path: Any) -> None:
    data_dir, store = _copy(tmp_path)
    orders, _ = _ids(store)["orders"]
    path = buffer_path(data_dir, orders)
    with closing(sqlite3.connect(path)) as con:
        con.execute("DELETE FROM batches WHERE seq = 6")
        con.commit()
    upgraded = upgrade_data_dir(store, data_dir)
    assert [u.pipeline_id for u in upgraded] == [_ids(store)["clicks"][0]]
    assert pending_upgrades(data_dir) == [orders]
    with closing(sqlite3.connect(path)) as con:
        assert [r[0] for r in con.execute("SELECT seq FROM batches ORDER BY seq")] == [5, 7]
    with store.reading() as s:
        assert s.scalars(select(LogEntry.level).where(LogEntry.pipeline_id == orders,
                                                      LogEntry.level == "error")).all()


def test_ingest_into_a_buffer_left_for_the_next_start_is_a_503_and_keeps_its_events(
        tmp_path: Any) -> None:
    """A buffer the upgrade had to leave as it was still holds acknowledged events:
    its pipeline answers ingest with 503 and Retry-After (try again), not 404, on
    which a client would give up on a pipeline that exists."""
    from control_api import create_app

    data_dir, store = _copy(tmp_path)
    orders, _ = _ids(store)["orders"]
    path = buffer_path(data_dir, orders)
    with closing(sqlite3.connect(path)) as con:
        con.execute("DELETE FROM batches WHERE seq = 6")  # a gap: the upgrade refuses it
        con.commit()
    key = "pdo_test_upgrade_key_0123456789"
    client = create_app({"DATA_DIR": data_dir, "API_KEY": key, "RATE_LIMIT": 0}).test_client()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    body = b'{"seq": 1000, "payload": "after"}\n'
    reply = client.post("/pipelines/orders/events", headers=headers, data=body)
    assert reply.status_code == 503, reply.get_data(as_text=True)
    assert reply.headers["Retry-After"] and reply.get_json()["error"]["code"] == \
        "SERVICE_UNAVAILABLE"
    assert "earlier release" in reply.get_json()["error"]["message"]
    assert data_dir not in reply.get_data(as_text=True)
    assert pending_upgrades(data_dir) == [orders]
    with closing(sqlite3.connect(path)) as con:
        assert [r[0] for r in con.execute("SELECT seq FROM batches ORDER BY seq")] == [5, 7]
    # The pipeline whose buffer was upgraded takes events as usual.
    reply = client.post("/pipelines/clicks/events", headers=headers, data=body)
    assert reply.status_code == 200 and reply.get_json()["data"]["accepted"] == 1


def test_an_old_buffer_still_open_elsewhere_is_not_touched(tmp_path: Any) -> None:
    """An earlier server still running on the data dir holds its buffers open."""
    data_dir, store = _copy(tmp_path)
    orders, _ = _ids(store)["orders"]
    path = buffer_path(data_dir, orders)
    with closing(sqlite3.connect(path)) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM batches").fetchone()  # a reader, as the old server
        upgraded = upgrade_data_dir(store, data_dir)
    assert [u.pipeline_id for u in upgraded] == [_ids(store)["clicks"][0]]
    assert pending_upgrades(data_dir) == [orders]
    upgrade_data_dir(store, data_dir)  # once the old server is gone
    _check_upgraded(data_dir, store)


def test_an_api_process_upgrades_when_its_local_runner_is_made(tmp_path: Any) -> None:
    """Without ``serve``'s job manager (an API-only process), the runner upgrades first."""
    data_dir, store = _copy(tmp_path)
    runner = LocalRunner(store, data_dir)
    orders, committed = _ids(store)["orders"]
    assert runner.ingest_counters(orders, committed)["backlog_events"] == 60
    _check_upgraded(data_dir, store)


_UPGRADE_WHEN_TOLD = """
import sys
from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.runners.local.upgrade import upgrade_data_dir

store = Store(default_database_url(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
upgrade_data_dir(store, sys.argv[1])
print("done", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_sigkill_at_any_moment_of_a_larger_upgrade_then_restart_is_exactly_once(
        tmp_path: Any, delay: float) -> None:
    """A real ``kill -9`` of the upgrading process, mid-write or between steps."""
    data_dir, store = _copy(tmp_path)
    orders, committed = _ids(store)["orders"]
    added = grow_old_buffer(buffer_path(data_dir, orders), requests=300, events=1000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    child = subprocess.Popen([sys.executable, "-c", _UPGRADE_WHEN_TOLD, data_dir], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"ready\n"
        child.stdin.write(b"go\n")
        child.stdin.flush()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    upgrade_data_dir(store, data_dir)  # the restart
    buffer = EventBuffer(buffer_path(data_dir, orders))
    try:
        last = buffer.backlog(committed).last_seq
        seqs = buffer.read_range(committed, last, SCHEMA).column("seq").to_pylist()
    finally:
        buffer.close()
    old = [s for s in expected()["acked"]["orders"]
           if s not in set(expected()["committed"]["orders"])]
    assert seqs == old + added
    assert pending_upgrades(data_dir) == []


def test_no_room_on_disk_leaves_every_old_buffer_as_it_was(tmp_path: Any,
                                                          monkeypatch: Any) -> None:
    data_dir, store = _copy(tmp_path)
    monkeypatch.setenv("PIPELINE_DO_MIN_FREE_DISK_BYTES", str(1 << 60))
    data_plane_settings.cache_clear()
    try:
        assert upgrade_data_dir(store, data_dir) == []
        assert len(pending_upgrades(data_dir)) == 2
        # Only each old file's WAL was folded into it (journal_mode=DELETE), losslessly.
        assert sorted(os.listdir(os.path.join(data_dir, "buffers"))) == sorted(
            n for n in os.listdir(os.path.join(FIXTURE, "data", "buffers"))
            if not n.endswith(("-wal", "-shm")))
    finally:
        monkeypatch.undo()
        data_plane_settings.cache_clear()
    upgrade_data_dir(store, data_dir)  # room again: the next start upgrades
    _check_upgraded(data_dir, store)
