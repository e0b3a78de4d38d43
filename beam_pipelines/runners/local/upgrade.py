"""Upgrading a data directory from the SQLite event buffer to the event log.

Releases up to 78d94f8 kept a pipeline's buffer in ``buffers/<id>.sqlite``:
a ``batches`` table (one row per accepted request: ``seq``, ``events``,
``bytes``, ``ingested_at``, ``data`` = Arrow IPC), ``dead_letters``,
``totals``, ``state`` (deleted), ``ingest_seconds`` and ``commit_latency``;
rows up to the pipeline's ``committed_seq`` (the catalog) were deleted after
their epoch committed. Today the events live in ``buffers/<id>.log/`` and that
path holds the ledger (:mod:`.buffer`). :func:`upgrade_data_dir` moves every
old buffer over before anything opens it, once:

* every row after ``committed_seq`` becomes one frame of the log with the
  same sequence number, ingest time, event count and raw bytes, in order, so
  the catalog's epochs (``(a, b]`` ranges) and offsets stay true: a planned
  epoch that never committed is re-run over the same events by the job
  manager (its earlier attempt's files are found by its manifest and
  removed first: local epoch files are named as they were, see
  :mod:`beam_pipelines.model.layout`); committed rows are not copied;
* ``events_in``/``bytes_in`` go to the log's head, ``events_rejected``, the
  dead letters (ids kept), the latencies and the per-second ingest counts of
  released rows to the new ledger; the deleted mark to the head;
* one ``info`` line in the pipeline's logs says what was moved.

Crash safety: the new log and ledger are built beside the old file
(``<id>.log.upgrading``, ``<id>.sqlite.upgrading``), synced and checked
frame by frame; renaming the log into place is the commit point. Until then
a restart throws the staged files away and starts over from the untouched
old file; after it, a restart finishes the remaining renames (old file set
aside as ``<id>.sqlite.pre-upgrade``, staged ledger into place, log line,
old file removed). A ``kill -9`` anywhere neither loses nor duplicates an
event. The old file's WAL is folded into it (``journal_mode=DELETE``) before
anything is read, which also fails if an old server still has it open.

A buffer that cannot be upgraded (an old server still running, too little
disk for a second copy of its uncommitted rows, a gap in its sequence) is
left exactly as it was, with an ``error`` line in its pipeline's logs; the
other pipelines go on, and the next start tries again. Until then that
pipeline's ingest is refused as if it had no buffer (nothing is acknowledged).

The catalog's own changes since then (``ADDED_COLUMNS``, new tables) are
made by ``Store.create_all``, which every server start runs first.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

from sqlalchemy import select

from beam_pipelines.catalog.store import Epoch, LogEntry, PipelineRow, Store
from beam_pipelines.errors import StorageError
from beam_pipelines.runners.local.files import (
    LEDGER_SUFFIX,
    LOG_SUFFIX,
    buffer_path,
    log_directory,
    remove_database,
    remove_file,
    remove_side_files,
)
from beam_pipelines.runners.local.ledger import Ledger
from beam_pipelines.runners.local.segments import FRAME_HEADER_BYTES, fsync_path
from beam_pipelines.runners.local.upgrade_log import StagedLog, stage_log
from beam_pipelines.settings import data_plane_settings

__all__ = ["Upgraded", "pending_upgrades", "upgrade_buffer", "upgrade_data_dir"]

_log = logging.getLogger(__name__)
_STAGED = ".upgrading"
_SET_ASIDE = ".pre-upgrade"
_OLD_FORMAT = "sqlite-buffer (releases up to 78d94f8)"


@dataclass(frozen=True)
class Upgraded:
    """What one pipeline's upgrade moved (the pipeline's log line says the same)."""

    pipeline_id: str
    requests: int
    events: int
    first_seq: int
    last_seq: int
    committed_seq: int
    dead_letters: int
    deleted: bool

    def message(self, planned: list[tuple[int, int, int]]) -> str:
        moved = (f"{self.events} uncommitted events in {self.requests} requests "
                 f"(seq {self.first_seq} to {self.last_seq})" if self.requests
                 else "no uncommitted events")
        text = (f"event buffer upgraded from the SQLite format of earlier releases: {moved} "
                f"moved to the event log after committed seq {self.committed_seq}; "
                f"{self.dead_letters} dead letters and the counters kept")
        if planned:
            text += "; planned epochs kept, re-run over the same events: " + ", ".join(
                f"{n} (seq {a + 1} to {b})" for n, a, b in planned)
        return text + (" (the pipeline was being deleted)" if self.deleted else "")


def pending_upgrades(data_dir: str) -> list[str]:
    """The pipeline ids whose buffer is in the old format, or half upgraded."""
    directory = os.path.join(data_dir, "buffers")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found: set[str] = set()
    for name in names:
        for suffix in (LEDGER_SUFFIX + _STAGED, LEDGER_SUFFIX + _SET_ASIDE, LOG_SUFFIX + _STAGED):
            if name.endswith(suffix):
                found.add(name[:-len(suffix)])
        if name.endswith(LEDGER_SUFFIX) and name[:-len(LEDGER_SUFFIX)] + LOG_SUFFIX not in names:
            found.add(name[:-len(LEDGER_SUFFIX)])  # a ledger never exists without its log
    return sorted(found)


def upgrade_data_dir(store: Store, data_dir: str, *,
                     step: Callable[[str], None] | None = None) -> list[Upgraded]:
    """Upgrade every old-format buffer of ``data_dir`` (a no-op when there is none).

    Run before the API serves and the job manager plans. ``step`` is called
    with the name of each step as it completes (tests crash there).
    """
    if not pending_upgrades(data_dir):
        return []
    done: list[Upgraded] = []
    with _exclusive(os.path.join(data_dir, "buffers")):
        for pipeline_id in pending_upgrades(data_dir):  # again, under the lock
            try:
                upgraded = upgrade_buffer(store, data_dir, pipeline_id, step=step)
            except StorageError as err:  # this buffer stays as it was; the others go on
                _log.error("pipeline %s: event buffer not upgraded: %s", pipeline_id, err)
                store.log(pipeline_id, "error", "the event buffer of an earlier release could "
                          "not be upgraded; its events are kept as they were: see the server "
                          "log")
                continue
            if upgraded is not None:
                done.append(upgraded)
    return done


def upgrade_buffer(store: Store, data_dir: str, pipeline_id: str, *,
                   step: Callable[[str], None] | None = None) -> Upgraded | None:
    """Upgrade one pipeline's buffer, or finish an upgrade a crash cut short.

    Call with the buffers directory locked (:func:`upgrade_data_dir`). Returns
    None for a buffer whose pipeline is gone from the catalog (left as it is).
    """
    step = step or (lambda _name: None)
    path = buffer_path(data_dir, pipeline_id)
    log_dir = log_directory(path)
    if not os.path.exists(os.path.join(log_dir, "HEAD")):
        with store.reading() as s:
            committed = s.scalar(select(PipelineRow.committed_seq)
                                 .where(PipelineRow.id == pipeline_id))
        if committed is None:
            _log.warning("buffer %s belongs to no pipeline in the catalog: not upgraded", path)
            return None
        shutil.rmtree(log_dir + _STAGED, ignore_errors=True)
        remove_database(path + _STAGED)
        try:
            staged = _stage(path, log_dir + _STAGED, path + _STAGED, committed)
        except BaseException:
            shutil.rmtree(log_dir + _STAGED, ignore_errors=True)
            remove_database(path + _STAGED)
            raise
        step("staged")
        os.rename(log_dir + _STAGED, log_dir)  # the commit point
        fsync_path(os.path.dirname(path))
        _log.info("pipeline %s: event buffer moved to %s (%d requests)", pipeline_id, log_dir,
                  staged.requests)
        step("log_in_place")
    return _finish(store, pipeline_id, path, step)


def _stage(path: str, log_dir: str, ledger_path: str, committed_seq: int) -> StagedLog:
    """Write the new log and ledger from the old file, synced; the old file is only read
    (its WAL folded in first)."""
    try:
        return _stage_from(path, log_dir, ledger_path, committed_seq)
    except sqlite3.Error as err:
        raise StorageError(f"the old event buffer {path} could not be read ({err}): is an "
                           "earlier server still running on this data directory?") from None
    except OSError as err:  # a full disk, most likely: the next start tries again
        raise StorageError(f"the upgrade of {path} could not be written: {err}") from None


def _stage_from(path: str, log_dir: str, ledger_path: str, committed_seq: int) -> StagedLog:
    with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5.0,
                                 isolation_level=None)) as old:
        old.execute("PRAGMA synchronous=FULL")
        mode = old.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise StorageError(f"the old event buffer {path} is in use by another process: "
                               "stop every earlier server before upgrading")
        if old.execute("SELECT count(*) FROM sqlite_master WHERE name = 'batches'"
                       ).fetchone()[0] == 0:
            raise StorageError(f"{path} is neither an old event buffer nor a ledger with a log")
        _check_room(old, os.path.dirname(path), committed_seq)
        events_in, bytes_in = old.execute("SELECT events_in, bytes_in FROM totals").fetchone()
        deleted = bool(old.execute("SELECT deleted FROM state").fetchone()[0])
        rows = old.execute("SELECT seq, events, bytes, ingested_at, data FROM batches "
                           "WHERE seq > ? ORDER BY seq", (committed_seq,))
        staged = stage_log(log_dir, rows, committed_seq=committed_seq, events_total=events_in,
                           raw_bytes_total=bytes_in, deleted=deleted)
    _stage_ledger(path, ledger_path, committed_seq, staged)
    return staged


def _check_room(old: sqlite3.Connection, directory: str, committed_seq: int) -> None:
    """Refuse an upgrade that would take the disk under the ingest floor
    (``PIPELINE_DO_MIN_FREE_DISK_BYTES``): the uncommitted rows are written once more."""
    rows, size = old.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM batches "
                             "WHERE seq > ?", (committed_seq,)).fetchone()
    need = size + rows * (FRAME_HEADER_BYTES + 8) + (1 << 20)  # and the new ledger
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    floor = data_plane_settings().min_free_disk_bytes
    if free - need < floor:
        raise StorageError(f"the upgrade needs {need} bytes of disk and would leave {free - need}, "
                           f"under the {floor} bytes kept free: free some space, then restart")


def _stage_ledger(old_path: str, ledger_path: str, committed_seq: int,
                  staged: StagedLog) -> None:
    """The new ledger: dead letters (ids kept), rejected count, latencies, and the
    per-second ingest counts of the released rows (the log's frames count the rest)."""
    Ledger.create(ledger_path)
    with closing(sqlite3.connect(ledger_path, isolation_level=None)) as con:
        con.execute("PRAGMA synchronous=FULL")
        ledger = Ledger(ledger_path)
        ledger.open()  # adds the replay columns (dead_letter_store.upgrade)
        ledger.close_connection()
        con.execute("ATTACH DATABASE ? AS old", (f"file:{old_path}?mode=ro",))
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO dead_letters (id, received_at, idx, code, message, record) "
                    "SELECT id, received_at, idx, code, message, record FROM old.dead_letters "
                    "ORDER BY id")
        con.execute("UPDATE totals SET events_rejected = (SELECT events_rejected FROM "
                    "old.totals), deleted_through = ?", (committed_seq,))
        con.execute("INSERT INTO commit_latency SELECT committed_at, latency_ms, events "
                    "FROM old.commit_latency")
        con.execute(
            "INSERT INTO ingest_seconds (second, events) "
            "SELECT s.second, s.events - coalesce(b.events, 0) FROM old.ingest_seconds s "
            "LEFT JOIN (SELECT CAST(ingested_at AS INTEGER) AS second, sum(events) AS events "
            "FROM old.batches WHERE seq > ? GROUP BY 1) b ON b.second = s.second "
            "WHERE s.events - coalesce(b.events, 0) > 0", (committed_seq,))
        con.execute("CREATE TABLE upgraded_from (format TEXT NOT NULL, requests INTEGER NOT "
                    "NULL, events INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq "
                    "INTEGER NOT NULL, committed_seq INTEGER NOT NULL, dead_letters INTEGER "
                    "NOT NULL, deleted INTEGER NOT NULL)")
        con.execute("INSERT INTO upgraded_from SELECT ?, ?, ?, ?, ?, ?, "
                    "(SELECT count(*) FROM old.dead_letters), ?",
                    (_OLD_FORMAT, staged.requests, staged.events, staged.first_seq,
                     staged.last_seq, committed_seq, int(staged.deleted)))
        con.execute("COMMIT")
        con.execute("DETACH DATABASE old")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, to be renamed
    fsync_path(ledger_path)


def _finish(store: Store, pipeline_id: str, path: str,
            step: Callable[[str], None]) -> Upgraded | None:
    """The steps after the commit point, each redone safely after a crash."""
    staged, aside = path + _STAGED, path + _SET_ASIDE
    if os.path.exists(staged):
        if os.path.exists(path):  # still the old file (the staged one is not in place)
            os.rename(path, aside)
            fsync_path(os.path.dirname(path))
            step("old_set_aside")
        # Whatever the old file left beside it must not be applied to the new one (its
        # WAL was folded in when staged, and nothing wrote to it since).
        remove_side_files(path)
        os.rename(staged, path)
        fsync_path(os.path.dirname(path))
        step("ledger_in_place")
    if not os.path.exists(aside):
        return None  # finished before (a crash came after the last removal)
    with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30.0)) as con:
        con.execute("PRAGMA journal_mode=WAL")  # as Ledger.create makes them; staged without
    upgraded = _recorded(path, pipeline_id)
    with store.reading() as s:
        planned = [(int(n), int(a), int(b)) for n, a, b in s.execute(
            select(Epoch.epoch, Epoch.range_start, Epoch.range_end)
            .where(Epoch.pipeline_id == pipeline_id, Epoch.status == "planned")
            .order_by(Epoch.epoch)).all()]
        message = upgraded.message(planned)
        logged = s.scalar(select(LogEntry.id).where(LogEntry.pipeline_id == pipeline_id,
                                                    LogEntry.message == message))
    if logged is None:  # a crash after the line and before the removal below
        store.log(pipeline_id, "info", message)
    step("logged")
    remove_file(aside)
    remove_file(path + ".lock")  # the old writers' lock file
    fsync_path(os.path.dirname(path))
    step("done")
    return upgraded


def _recorded(path: str, pipeline_id: str) -> Upgraded:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        row = con.execute("SELECT requests, events, first_seq, last_seq, committed_seq, "
                          "dead_letters, deleted FROM upgraded_from").fetchone()
    requests, events, first, last, committed, letters, deleted = row
    return Upgraded(pipeline_id, requests, events, first, last, committed, letters,
                    bool(deleted))


@contextmanager
def _exclusive(directory: str) -> Iterator[None]:
    """One upgrader at a time per data dir (processes starting together)."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
