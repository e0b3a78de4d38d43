"""The dead-letter table of a pipeline's ledger: listing, replay settlement, expiry.

A dead letter is one rejected record: its raw text, the code and message it
was rejected with, when it first came (``received_at``), when it was last
rejected (``rejected_at``) and how many times (``attempts``). Ledgers made
before replay existed lack these columns and the replay's marks
(``replay_seq``, ``replay_at``); :func:`upgrade` adds them when a process
first connects (a NULL ``rejected_at`` reads as ``received_at``).

A replay settles under the log's lock (the lock every appender takes
first, so the log's lock and the ledger's are always taken in the same
order), so two replays of the same ids run one after the other and the
second finds nothing left to accept. In one transaction the rows still
present are claimed: marked with the sequence number and ingest time of the
frame their events are about to become. Then the frame is appended (synced)
and, in a second transaction, the marked rows are deleted. A crash between
the two leaves marked rows; :func:`settle_marked`, run under the lock
before the next replay and when the job manager first opens the buffer,
deletes them if their frame is in the log (same sequence number *and*
ingest time: a torn frame's number is reused by the next append, its time
is not) and clears the mark otherwise. Nothing is accepted twice or lost.

One case stays open: a distributed pipeline publishes before its ledger
appends, and its ledger keeps only its newest frames, so a crash there
between the publish and the delete can leave the records dead letters
although their events were published (a later replay sends them again).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from beam_pipelines.runners.base import DeadLetterQuery

__all__ = ["expire_before", "select_dead_letters", "settle_marked", "settle_replay", "upgrade"]

_REJECTED_AT = "coalesce(rejected_at, received_at)"
_COLUMNS = ("id", "idx", "code", "message", "record", "received_at", _REJECTED_AT, "attempts")
_NAMES = ("id", "index", "code", "message", "record", "received_at", "rejected_at", "attempts")


def upgrade(con: sqlite3.Connection) -> None:
    """Add the replay columns and the code index to a ledger that lacks them."""
    columns = {row[1] for row in con.execute("PRAGMA table_info(dead_letters)")}
    for name, ddl in (("attempts", "attempts INTEGER NOT NULL DEFAULT 1"),
                      ("rejected_at", "rejected_at REAL"), ("replay_seq", "replay_seq INTEGER"),
                      ("replay_at", "replay_at REAL")):
        if name not in columns:
            try:
                con.execute(f"ALTER TABLE dead_letters ADD COLUMN {ddl}")
            except sqlite3.OperationalError as err:  # another process added it just now
                if "duplicate column" not in str(err):
                    raise
    con.execute("CREATE INDEX IF NOT EXISTS dead_letters_code ON dead_letters (code, id)")
    con.execute("CREATE INDEX IF NOT EXISTS dead_letters_replaying ON dead_letters (replay_seq) "
                "WHERE replay_seq IS NOT NULL")


def select_dead_letters(con: sqlite3.Connection, query: DeadLetterQuery) -> list[dict[str, Any]]:
    """The dead letters ``query`` selects, newest first."""
    where: list[str] = []
    params: list[Any] = []
    if query.ids is not None:
        if not query.ids:
            return []
        where.append(f"id IN ({','.join('?' * len(query.ids))})")
        params.extend(query.ids)
    if query.code is not None:
        where.append("code = ?")
        params.append(query.code)
    if query.since is not None:
        where.append(f"{_REJECTED_AT} >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append(f"{_REJECTED_AT} < ?")
        params.append(query.until)
    if query.before_id is not None:
        where.append("id < ?")
        params.append(query.before_id)
    sql = (f"SELECT {', '.join(_COLUMNS)} FROM dead_letters"
           + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?")
    rows = con.execute(sql, (*params, query.limit)).fetchall()
    return [dict(zip(_NAMES, row)) for row in rows]


def settle_replay(con: sqlite3.Connection, accepted: Sequence[int],
                  rejected: Sequence[tuple[int, str, str]], frame: tuple[int, float],
                  append: Callable[[list[int]], None]) -> tuple[list[int], list[int]]:
    """Claim the accepted ids still present for ``frame`` (its sequence number and
    ingest time), record the new reason of each rejected one, ``append`` the
    claimed rows' events as that frame, then delete them.

    Returns (the ids accepted now, the ids rejected again). An id another
    replay took already is in neither. If ``append`` raises, the claim is undone.
    """
    seq, at = frame
    wanted = [*accepted, *(r[0] for r in rejected)]
    with _transaction(con):
        present: set[int] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            present.update(i for (i,) in con.execute(
                f"SELECT id FROM dead_letters WHERE replay_seq IS NULL AND id IN "
                f"({','.join('?' * len(chunk))})", chunk))
        claimed = [i for i in accepted if i in present]
        con.executemany("UPDATE dead_letters SET replay_seq = ?, replay_at = ? WHERE id = ?",
                        [(seq, at, i) for i in claimed])
        again = [r for r in rejected if r[0] in present]
        con.executemany("UPDATE dead_letters SET code = ?, message = ?, rejected_at = ?, "
                        "attempts = attempts + 1 WHERE id = ?",
                        [(code, message, at, i) for i, code, message in again])
    if claimed:
        try:
            append(claimed)
        except BaseException:
            _settle(con, seq, at, accepted=False)
            raise
        _settle(con, seq, at, accepted=True)
    return claimed, [r[0] for r in again]


def settle_marked(con: sqlite3.Connection,
                  frame_time: Callable[[int], float | None]) -> int:
    """Settle the claims a crash left: accepted when the log holds their frame
    (``frame_time(seq)`` is their ingest time), else dead letters again.
    Returns how many rows were found accepted."""
    accepted = 0
    for seq, at in con.execute("SELECT DISTINCT replay_seq, replay_at FROM dead_letters "
                               "WHERE replay_seq IS NOT NULL").fetchall():
        found = frame_time(int(seq)) == at
        accepted += _settle(con, int(seq), float(at), accepted=found)
    return accepted


def _settle(con: sqlite3.Connection, seq: int, at: float, *, accepted: bool) -> int:
    sql = ("DELETE FROM dead_letters" if accepted
           else "UPDATE dead_letters SET replay_seq = NULL, replay_at = NULL")
    with _transaction(con):
        return int(con.execute(sql + " WHERE replay_seq = ? AND replay_at = ?",
                               (seq, at)).rowcount)


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def expire_before(con: sqlite3.Connection, cutoff: float) -> int:
    """Delete the dead letters last rejected before ``cutoff``; return how many."""
    return int(con.execute(f"DELETE FROM dead_letters WHERE {_REJECTED_AT} < ?",
                           (cutoff,)).rowcount)
