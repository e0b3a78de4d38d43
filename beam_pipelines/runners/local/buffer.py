"""The durable event buffer: one SQLite file per pipeline, WAL mode.

A row is one accepted request: an Arrow IPC stream of its events. Rows get
increasing sequence numbers; an epoch covers the rows ``(a, b]``. SQLite's
single writer lock makes sequence order equal commit order, so a planner
that reads ``max(seq)`` never skips a row that commits later with a lower
number. ``append`` returns only after the transaction is fsynced
(``synchronous=FULL``): an acknowledged event survives ``kill -9`` and
power loss.

Rows are deleted only after the epoch that read them is committed, a few
at a time, so an ingest request never waits behind a whole epoch's delete.
Rejected records go to the ``dead_letters`` table of the same file.

Writers (every process's group commit, the epoch worker's release) queue on
an ``flock`` of ``<buffer>.lock`` before they begin: the kernel wakes the
next writer the moment the lock is free, where SQLite's own busy handler
would sleep in growing steps (up to 100 ms) and retry. SQLite's locking is
still what keeps the file consistent; the lock file only orders writers.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.ipc as ipc

from beam_pipelines.errors import NotFoundError

__all__ = ["Backlog", "BufferHandles", "EventBuffer", "buffer_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    events INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    ingested_at REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    idx INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    record TEXT
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    events_in INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    events_rejected INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    deleted INTEGER NOT NULL
);
INSERT OR IGNORE INTO state VALUES (1, 0);
CREATE TABLE IF NOT EXISTS ingest_seconds (
    second INTEGER PRIMARY KEY,
    events INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commit_latency (
    committed_at REAL NOT NULL,
    latency_ms REAL NOT NULL,
    events INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS commit_latency_at ON commit_latency (committed_at);
"""


# Rows dropped per transaction after a commit: each holds the write lock for
# a few milliseconds (a row is one request, ~100 kB for 1,000 events). Between
# two, the releaser pauses so that ingest commits queued on the lock go first:
# nothing waits for a release but disk space.
RELEASE_ROWS_PER_TRANSACTION = 8
RELEASE_PAUSE_SECONDS = 0.02
# A process checkpoints the WAL after committing this much, on a thread of
# its own, outside the writer lock and off every request's path. (SQLite's
# automatic checkpoint runs inside the COMMIT of whichever request crosses
# the threshold, and that request would wait for it.) Small and frequent:
# a checkpoint's writes and fsync queue on the disk ahead of the next
# commit's fdatasync, so a 4 MB one stalls that commit by 10-50 ms. About
# one request's worth at a time took the ack p99 at 70k events/s from
# ~37 ms (4 MB) to ~20 ms here, at the same throughput.
CHECKPOINT_EVERY_BYTES = 64 << 10
# When the WAL restarts, a file that grew beyond this is cut back to it.
_WAL_SIZE_LIMIT_BYTES = 64 << 20


def buffer_path(data_dir: str, pipeline_id: str) -> str:
    return os.path.join(data_dir, "buffers", f"{pipeline_id}.sqlite")


@dataclass
class _PendingAppend:
    blob: bytes | None
    events: int
    nbytes: int
    rejected: list[tuple[int, str, str, str | None]]
    seq: int | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(frozen=True)
class Backlog:
    """What is buffered after a given sequence number."""

    last_seq: int
    events: int
    bytes: int
    oldest_ingested_at: float | None


class EventBuffer:
    """Append Arrow batches durably; read sequence ranges back zero-copy."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        """Open a pipeline's buffer; only ``create`` makes a new file.

        Every connection opens the file read-write without creating it, so a
        handle to a deleted pipeline's buffer can never bring a new, orphan
        file into being and acknowledge events into it.
        """
        self.path = path
        self._local = threading.local()
        self._queue: list[_PendingAppend] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._uncheckpointed = 0
        self._checkpointer: _Checkpointer | None = None
        if create:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with closing(sqlite3.connect(path, timeout=30.0, isolation_level=None)) as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
        else:
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=30.0,
                                      isolation_level=None)
            except sqlite3.OperationalError:
                raise NotFoundError("the pipeline's buffer does not exist") from None
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA wal_autocheckpoint=0")
            con.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT_BYTES}")
            self._local.con = con
        return con

    def close_connection(self) -> None:
        """Close the calling thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, queued behind other writers on the lock file.

        Callers in this process serialize on ``_commit_lock`` first.
        """
        con = self._connect()
        fd = self._writer_lock_fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _writer_lock_fd(self) -> int:
        # Opened per process: a descriptor inherited across fork shares its
        # flock with the parent and would not order the two.
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o600)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.close_connection()
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = None

    def append(self, table: pa.Table, rejected: Iterable[tuple[int, str, str, str | None]] = (),
               *, raw_bytes: int = 0) -> int | None:
        """Store accepted events and dead letters durably; return the row's sequence number.

        Group commit: requests arriving together on this process's threads
        share one transaction and one fsync, each still getting its own row.
        Returns only once this request's row is committed (None when no event
        was accepted).
        """
        blob = _to_ipc(table) if table.num_rows else None
        item = _PendingAppend(blob, table.num_rows, raw_bytes or (len(blob) if blob else 0),
                              list(rejected))
        with self._queue_lock:
            self._queue.append(item)
        with self._commit_lock:
            if not item.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
                self._uncheckpointed += sum(len(i.blob) for i in group if i.blob is not None)
                if self._uncheckpointed >= CHECKPOINT_EVERY_BYTES:
                    self._uncheckpointed = 0
                    self.checkpoint_soon()
        if item.error is not None:
            raise item.error
        return item.seq

    def _commit_group(self, group: list[_PendingAppend]) -> None:
        now = time.time()
        try:
            with self._transaction() as con:
                # Checked under the write lock: once delete() has marked the
                # buffer, no append can be acknowledged into it any more.
                if con.execute("SELECT deleted FROM state").fetchone()[0]:
                    raise NotFoundError("the pipeline was deleted")
                events = nbytes = nrejected = 0
                for item in group:
                    if item.blob is not None:
                        item.seq = con.execute(
                            "INSERT INTO batches (events, bytes, ingested_at, data) "
                            "VALUES (?, ?, ?, ?)", (item.events, item.nbytes, now, item.blob)
                        ).lastrowid
                    if item.rejected:
                        con.executemany(
                            "INSERT INTO dead_letters (received_at, idx, code, message, record) "
                            "VALUES (?, ?, ?, ?, ?)", [(now, *r) for r in item.rejected])
                    events += item.events
                    nbytes += item.nbytes
                    nrejected += len(item.rejected)
                if events:
                    con.execute("INSERT INTO ingest_seconds VALUES (?, ?) ON CONFLICT (second) "
                                "DO UPDATE SET events = events + excluded.events",
                                (int(now), events))
                con.execute("UPDATE totals SET events_in = events_in + ?, bytes_in = bytes_in + ?, "
                            "events_rejected = events_rejected + ?", (events, nbytes, nrejected))
        except BaseException as err:  # noqa: BLE001 - every waiter of the group gets the failure
            for item in group:
                item.seq = None
                item.error = err
        finally:
            for item in group:
                item.done = True

    def checkpoint_soon(self) -> None:
        """Ask this process's checkpoint thread to copy the WAL into the database."""
        if self._checkpointer is None or not self._checkpointer.is_alive():
            self._checkpointer = _Checkpointer(self)
            self._checkpointer.start()
        self._checkpointer.wake.set()

    def checkpoint(self) -> None:
        """A passive checkpoint: never waits for, nor blocks, readers and writers."""
        self._connect().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def data_version(self) -> int:
        """A number that changes whenever another connection has committed to
        the buffer since this thread last asked (SQLite's ``data_version``):
        a look at shared memory, no query of the file."""
        return int(self._connect().execute("PRAGMA data_version").fetchone()[0])

    def backlog(self, after_seq: int, *, max_events: int | None = None,
                max_bytes: int | None = None) -> Backlog:
        """The rows after ``after_seq``; with limits, the prefix an epoch may take.

        The prefix always holds at least one row, so one oversized request
        still makes progress.
        """
        con = self._connect()
        if max_events is None and max_bytes is None:
            row = con.execute(
                "SELECT coalesce(max(seq), ?), coalesce(sum(events), 0), coalesce(sum(bytes), 0), "
                "min(ingested_at) FROM batches WHERE seq > ?", (after_seq, after_seq)).fetchone()
            return Backlog(*row)
        rows = con.execute(
            "SELECT seq, events, bytes, ingested_at FROM batches WHERE seq > ? ORDER BY seq",
            (after_seq,))
        last, events, size, oldest = after_seq, 0, 0, None
        for seq, n, b, at in rows:  # one row per request, not per event
            if events and ((max_events and events + n > max_events)
                           or (max_bytes and size + b > max_bytes)):
                break
            last, events, size = seq, events + n, size + b
            oldest = at if oldest is None else oldest
        return Backlog(last, events, size, oldest)

    def read_range(self, after_seq: int, through_seq: int, schema: pa.Schema) -> pa.Table:
        """All events in rows ``(after_seq, through_seq]`` as one table, in order."""
        con = self._connect()
        rows = con.execute("SELECT data FROM batches WHERE seq > ? AND seq <= ? ORDER BY seq",
                           (after_seq, through_seq)).fetchall()
        tables = [ipc.open_stream(pa.py_buffer(data)).read_all() for (data,) in rows]
        if not tables:
            return schema.empty_table()
        return pa.concat_tables(tables)

    def ingested_times(self, after_seq: int, through_seq: int) -> list[tuple[float, int]]:
        """(ingest time, events) per row in the range: for latency figures."""
        con = self._connect()
        return con.execute("SELECT ingested_at, events FROM batches WHERE seq > ? AND seq <= ?",
                           (after_seq, through_seq)).fetchall()

    def release(self, after_seq: int, through_seq: int, committed_at: float, *,
                pause: float = 0.0) -> None:
        """After a commit: record each row's ack-to-commit latency, then drop the rows.

        Rows go a few per transaction, ``pause`` seconds apart, and their
        commits are not fsynced (a delete lost to a crash is redone by the
        next release: everything up to ``through_seq`` goes).
        """
        with self._commit_lock, self._transaction() as con:
            con.execute("INSERT INTO commit_latency SELECT ?, (? - ingested_at) * 1000.0, events "
                        "FROM batches WHERE seq > ? AND seq <= ?",
                        (committed_at, committed_at, after_seq, through_seq))
            horizon = committed_at - 86_400
            con.execute("DELETE FROM commit_latency WHERE committed_at < ?", (horizon,))
            con.execute("DELETE FROM ingest_seconds WHERE second < ?", (int(horizon),))
        con = self._connect()
        con.execute("PRAGMA synchronous=NORMAL")
        try:
            while True:
                with self._commit_lock, self._transaction() as con:
                    deleted = con.execute(
                        "DELETE FROM batches WHERE seq IN (SELECT seq FROM batches "
                        "WHERE seq <= ? ORDER BY seq LIMIT ?)",
                        (through_seq, RELEASE_ROWS_PER_TRANSACTION)).rowcount
                if deleted < RELEASE_ROWS_PER_TRANSACTION:
                    break
                time.sleep(pause)
        finally:
            con.execute("PRAGMA synchronous=FULL")

    def events_since(self, since: float) -> int:
        (count,) = self._connect().execute(
            "SELECT coalesce(sum(events), 0) FROM ingest_seconds WHERE second >= ?",
            (int(since),)).fetchone()
        return int(count)

    def latency_percentiles(self, since: float) -> dict[str, float | None]:
        """Event-weighted p50/p95/p99 of ack-to-commit latency in the window."""
        rows = self._connect().execute(
            "SELECT latency_ms, events FROM commit_latency WHERE committed_at >= ? "
            "ORDER BY latency_ms", (since,)).fetchall()
        total = sum(n for _, n in rows)
        out: dict[str, float | None] = {"p50": None, "p95": None, "p99": None}
        if not total:
            return out
        marks = {"p50": 0.50 * total, "p95": 0.95 * total, "p99": 0.99 * total}
        seen = 0
        for latency, n in rows:  # one row per acknowledged request, not per event
            seen += n
            for name, mark in marks.items():
                if out[name] is None and seen >= mark:
                    out[name] = round(latency, 1)
        return out

    def totals(self) -> dict[str, int]:
        row = self._connect().execute(
            "SELECT events_in, bytes_in, events_rejected FROM totals").fetchone()
        return {"events_in": row[0], "bytes_in": row[1], "events_rejected": row[2]}

    def recent(self, limit: int, schema: pa.Schema) -> pa.Table:
        """The newest buffered events, at most ``limit``: for SQL dry runs."""
        con = self._connect()
        rows = con.execute("SELECT data FROM batches ORDER BY seq DESC LIMIT 50").fetchall()
        tables: list[pa.Table] = []
        total = 0
        for (data,) in rows:
            tables.append(ipc.open_stream(pa.py_buffer(data)).read_all())
            total += tables[-1].num_rows
            if total >= limit:
                break
        if not tables:
            return schema.empty_table()
        return pa.concat_tables(reversed(tables)).slice(max(0, total - limit))

    def dead_letters(self, limit: int = 100) -> list[dict[str, object]]:
        rows = self._connect().execute(
            "SELECT received_at, idx, code, message, record FROM dead_letters ORDER BY id DESC "
            "LIMIT ?", (limit,)).fetchall()
        return [dict(zip(("received_at", "index", "code", "message", "record"), r)) for r in rows]

    def mark_deleted(self) -> None:
        """Refuse every later append (in any process) before the file goes away."""
        with self._commit_lock, self._transaction() as con:
            con.execute("UPDATE state SET deleted = 1")

    def destroy(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm", ".lock"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass


class _Checkpointer(threading.Thread):
    """Runs a buffer's checkpoints, one at a time, when woken."""

    def __init__(self, buffer: EventBuffer) -> None:
        super().__init__(name=f"checkpoint-{os.path.basename(buffer.path)}", daemon=True)
        self.buffer = buffer
        self.wake = threading.Event()
        self._stopping = False

    def run(self) -> None:
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self._stopping:
                    return
                try:
                    self.buffer.checkpoint()
                except sqlite3.Error:
                    pass  # the next one copies what this one could not
        finally:
            self.buffer.close_connection()

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()


class BufferHandles:
    """A process's open buffers, one per pipeline id, opened on first use."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._open: dict[str, EventBuffer] = {}
        self._lock = threading.Lock()

    def get(self, pipeline_id: str) -> EventBuffer:
        with self._lock:
            buffer = self._open.get(pipeline_id)
            if buffer is None:
                buffer = self._open[pipeline_id] = EventBuffer(buffer_path(self.data_dir,
                                                                           pipeline_id))
            return buffer

    def forget(self, pipeline_id: str) -> EventBuffer | None:
        """Drop a handle without closing it (the caller destroys or closes it)."""
        with self._lock:
            return self._open.pop(pipeline_id, None)

    def keep_only(self, pipeline_ids: Iterable[str]) -> None:
        """Close the handles of every pipeline not named (paused, stopped, deleted)."""
        keep = set(pipeline_ids)
        with self._lock:
            stale = [self._open.pop(p) for p in set(self._open) - keep]
        for buffer in stale:
            buffer.close()

    def close(self) -> None:
        self.keep_only(())


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
