"""Per-key rate limits shared by every server process on the host.

A fixed one-minute window per key, counted in a small SQLite file beside
the store. The counters need no durability (a lost count after a power cut
costs nothing), so the file runs with ``synchronous=OFF``; SQLite's lock
makes the count exact across gunicorn workers.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass

__all__ = ["RateLimiter", "Verdict"]

_WINDOW = 60


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # Unix seconds when the window ends

    def headers(self) -> dict[str, str]:
        out = {"X-RateLimit-Limit": str(self.limit),
               "X-RateLimit-Remaining": str(self.remaining),
               "X-RateLimit-Reset": str(self.reset)}
        if not self.allowed:
            out["Retry-After"] = str(max(1, self.reset - int(time.time())))
        return out


class RateLimiter:
    def __init__(self, path: str, per_minute: int) -> None:
        self.path = path
        self.per_minute = per_minute
        self._local = threading.local()
        if per_minute > 0:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._connect().execute(
                "CREATE TABLE IF NOT EXISTS hits (key TEXT, window INTEGER, count INTEGER, "
                "PRIMARY KEY (key, window))")

    def _connect(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=OFF")
            self._local.con = con
        return con

    def hit(self, key: str) -> Verdict:
        now = int(time.time())
        window = now - now % _WINDOW
        reset = window + _WINDOW
        if self.per_minute <= 0:
            return Verdict(True, 0, 0, reset)
        con = self._connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("INSERT INTO hits VALUES (?, ?, 1) ON CONFLICT (key, window) "
                        "DO UPDATE SET count = count + 1", (key, window))
            (count,) = con.execute("SELECT count FROM hits WHERE key = ? AND window = ?",
                                   (key, window)).fetchone()
            if count == 1:
                con.execute("DELETE FROM hits WHERE window < ?", (window,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        allowed = count <= self.per_minute
        return Verdict(allowed, self.per_minute, max(0, self.per_minute - count), reset)
