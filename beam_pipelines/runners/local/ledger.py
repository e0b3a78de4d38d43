"""A pipeline's buffer ledger: the SQLite file beside its event log.

The log holds the events; this holds what is not an event: dead letters
and their count, the deleted segments (their counts, and their events per
ingest second for ``monitor``, which outlive the files), each released
request's ack-to-commit latency, and how far segments were deleted. Nothing here is written on
an ordinary ingest request: a commit of the log touches SQLite only when
the request has rejected records.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing

from beam_pipelines.errors import NotFoundError
from beam_pipelines.runners.base import DeadLetterQuery
from beam_pipelines.runners.local import dead_letter_store

__all__ = ["Ledger", "SegmentSummary"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    idx INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    record TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    rejected_at REAL
);
CREATE INDEX IF NOT EXISTS dead_letters_code ON dead_letters (code, id);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    events_rejected INTEGER NOT NULL,
    deleted_through INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    events INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    deleted_at REAL NOT NULL
);
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

# (first seq, last seq, events, raw bytes, bytes on disk) of a deleted segment
SegmentSummary = tuple[int, int, int, int, int]
_HISTORY_SECONDS = 86_400


class Ledger:
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    @staticmethod
    def create(path: str) -> None:
        with closing(sqlite3.connect(path, timeout=30.0, isolation_level=None)) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=30.0,
                                      isolation_level=None)
            except sqlite3.OperationalError:
                raise NotFoundError("the pipeline's buffer does not exist") from None
            con.execute("PRAGMA synchronous=FULL")
            dead_letter_store.upgrade(con)
            self._local.con = con
        return con

    def open(self) -> None:
        """Connect now (this thread): a missing ledger raises ``NotFoundError``."""
        self._connect()

    def close_connection(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def _write(self, statements: Iterable[tuple[str, Sequence[object] | list[Sequence[object]]]],
               ) -> None:
        con = self._connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                if params and isinstance(params, list):
                    con.executemany(sql, params)
                else:
                    con.execute(sql, params)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def add_dead_letters(self, rows: list[tuple[float, int, str, str, str | None]]) -> None:
        """Rejected records (received_at, index, code, message, record), durably."""
        self._write([("INSERT INTO dead_letters (received_at, idx, code, message, record, "
                      "rejected_at) VALUES (?1, ?2, ?3, ?4, ?5, ?1)", rows),
                     ("UPDATE totals SET events_rejected = events_rejected + ?", (len(rows),))])

    def record_latencies(self, committed_at: float, ingested: list[tuple[float, int]]) -> None:
        """Each committed request's ack-to-commit latency, weighted by its events."""
        horizon = committed_at - _HISTORY_SECONDS
        self._write([
            ("INSERT INTO commit_latency VALUES (?, ?, ?)",
             [(committed_at, (committed_at - at) * 1000.0, n) for at, n in ingested]),
            ("DELETE FROM commit_latency WHERE committed_at < ?", (horizon,)),
            ("DELETE FROM ingest_seconds WHERE second < ?", (int(horizon),)),
        ])

    def record_deleted(self, segments: list[tuple[SegmentSummary, dict[int, int]]],
                       deleted_at: float) -> None:
        """Segments about to leave the disk, with their events per ingest second:
        their counts move here first, once per segment (a segment recorded by
        another process already is skipped)."""
        con = self._connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            for summary, seconds in segments:
                if not con.execute("INSERT OR IGNORE INTO segments VALUES (?, ?, ?, ?, ?, ?)",
                                   (*summary, deleted_at)).rowcount:
                    continue
                con.execute("UPDATE totals SET deleted_through = max(deleted_through, ?)",
                            (summary[1],))
                con.executemany("INSERT INTO ingest_seconds VALUES (?, ?) ON CONFLICT (second) "
                                "DO UPDATE SET events = events + excluded.events",
                                list(seconds.items()))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def deleted_through(self) -> int:
        """The last sequence number of the deleted segments."""
        return int(self._connect().execute("SELECT deleted_through FROM totals").fetchone()[0])

    def rejected(self) -> int:
        return int(self._connect().execute("SELECT events_rejected FROM totals").fetchone()[0])

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

    def dead_letters(self, query: DeadLetterQuery | None = None) -> list[dict[str, object]]:
        """The dead letters ``query`` selects (default: the newest 100), newest first."""
        return dead_letter_store.select_dead_letters(self._connect(), query or DeadLetterQuery())

    def settle_replay(self, accepted: Sequence[int], rejected: Sequence[tuple[int, str, str]],
                      frame: tuple[int, float], append: Callable[[list[int]], None],
                      ) -> tuple[list[int], list[int]]:
        """See :func:`.dead_letter_store.settle_replay` (call under the log's lock)."""
        return dead_letter_store.settle_replay(self._connect(), accepted, rejected, frame,
                                               append)

    def settle_marked(self, frame_time: Callable[[int], float | None]) -> int:
        """See :func:`.dead_letter_store.settle_marked` (call under the log's lock)."""
        return dead_letter_store.settle_marked(self._connect(), frame_time)

    def expire_dead_letters(self, cutoff: float) -> int:
        """Delete the dead letters last rejected before ``cutoff`` (retention.seconds)."""
        return dead_letter_store.expire_before(self._connect(), cutoff)
