"""The dead-letter table of a pipeline's ledger: listing, replay settlement, expiry.

A dead letter is one rejected record: its raw text, the code and message it
was rejected with, when it first came (``received_at``), when it was last
rejected (``rejected_at``) and how many times (``attempts``). Ledgers made
before replay existed lack the last two columns; :func:`upgrade` adds them
when a process first connects (a NULL ``rejected_at`` reads as
``received_at``).

A replay settles in one ledger transaction, taken under the log's lock (the
lock every appender takes first, so the two locks are always taken in the
same order): the rows still present are claimed, their accepted events
appended to the log, and only then deleted, before the commit. Two replays
of the same ids therefore run one after the other, and the second finds
nothing left to accept.

Known gap: a crash after the frame's sync and before the ledger's commit
leaves the records in the log *and* in the dead letters, so a later replay
would accept them a second time (a failed append or publish, or a crash
before the sync, leaves them dead letters only: nothing is lost). Closing
it needs the claimed rows marked with the frame they went into, settled at
the next open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from beam_pipelines.runners.base import DeadLetterQuery

__all__ = ["expire_before", "select_dead_letters", "settle_replay", "upgrade"]

_REJECTED_AT = "coalesce(rejected_at, received_at)"
_COLUMNS = ("id", "idx", "code", "message", "record", "received_at", _REJECTED_AT, "attempts")
_NAMES = ("id", "index", "code", "message", "record", "received_at", "rejected_at", "attempts")


def upgrade(con: sqlite3.Connection) -> None:
    """Add the replay columns and the code index to a ledger that lacks them."""
    columns = {row[1] for row in con.execute("PRAGMA table_info(dead_letters)")}
    for name, ddl in (("attempts", "attempts INTEGER NOT NULL DEFAULT 1"),
                      ("rejected_at", "rejected_at REAL")):
        if name not in columns:
            try:
                con.execute(f"ALTER TABLE dead_letters ADD COLUMN {ddl}")
            except sqlite3.OperationalError as err:  # another process added it just now
                if "duplicate column" not in str(err):
                    raise
    con.execute("CREATE INDEX IF NOT EXISTS dead_letters_code ON dead_letters (code, id)")


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
                  rejected: Sequence[tuple[int, str, str]], now: float,
                  append: Callable[[list[int]], None]) -> tuple[list[int], list[int]]:
    """Claim the accepted ids still present, ``append`` their events, delete them, and
    record the new reason of each rejected one, in one transaction.

    Returns (the ids accepted now, the ids rejected again). An id another
    replay took already is in neither. If ``append`` raises, nothing changes.
    """
    wanted = [*accepted, *(r[0] for r in rejected)]
    con.execute("BEGIN IMMEDIATE")
    try:
        present: set[int] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            present.update(i for (i,) in con.execute(
                f"SELECT id FROM dead_letters WHERE id IN ({','.join('?' * len(chunk))})",
                chunk))
        claimed = [i for i in accepted if i in present]
        if claimed:
            append(claimed)
            con.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in claimed])
        again = [r for r in rejected if r[0] in present]
        con.executemany("UPDATE dead_letters SET code = ?, message = ?, rejected_at = ?, "
                        "attempts = attempts + 1 WHERE id = ?",
                        [(code, message, now, i) for i, code, message in again])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return claimed, [r[0] for r in again]


def expire_before(con: sqlite3.Connection, cutoff: float) -> int:
    """Delete the dead letters last rejected before ``cutoff``; return how many."""
    return int(con.execute(f"DELETE FROM dead_letters WHERE {_REJECTED_AT} < ?",
                           (cutoff,)).rowcount)
