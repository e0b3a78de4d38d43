"""Bookkeeping for suites on the real server: which events were acknowledged,
which must never reach the lake, and what the lake holds after ``stop``.

Event ids are unique across a whole module, so the ids read back from every
pipeline's files can be counted together; a case's ids say how many of its
events were delivered, lost or duplicated.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import duckdb
import requests

from tests.live import LiveServer

__all__ = ["Lake", "Ledger", "Tracked", "lake_files", "ndjson", "read_lake", "send", "sink_dir"]


def ndjson(records: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def send(server: LiveServer, path: str, body: bytes | Iterator[bytes], *,
         content_type: str = "application/x-ndjson", headers: dict[str, str] | None = None,
         timeout: float = 120.0) -> tuple[int | None, dict[str, Any]]:
    """POST raw bytes (an iterator is sent chunked); the status and the JSON
    envelope, or ``(None, {"error": ...})`` when the connection dropped."""
    try:
        response = requests.post(server.url + path, data=body, timeout=timeout, headers={
            "Authorization": f"Bearer {server.api_key}", "Content-Type": content_type,
            **(headers or {})})
    except requests.RequestException as err:
        return None, {"error": {"code": "connection dropped", "message": type(err).__name__}}
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"error": {"code": "not JSON", "message": response.text[:200]}}


def sink_dir(uri: str) -> str:
    return urlparse(uri).path if uri.startswith("file://") else uri


def lake_files(root: str) -> list[str]:
    """Every finished Parquet file under ``root`` (scratch ``_tmp`` dirs left out)."""
    return sorted(p for p in glob.glob(os.path.join(glob.escape(root), "**", "*.parquet"),
                                       recursive=True) if f"{os.sep}_tmp{os.sep}" not in p)


def read_lake(files: list[str], columns: str, *, strict: bool = False,
              ) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    """The rows of every file DuckDB can read, and the error of every file it cannot
    (``strict``: raise the first error instead)."""
    rows: list[tuple[Any, ...]] = []
    unreadable: dict[str, str] = {}
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        for path in files:
            try:
                rows += con.execute(f"SELECT {columns} FROM read_parquet(?, hive_partitioning=false)",
                                    [path]).fetchall()
            except duckdb.Error as err:
                if strict:
                    raise
                unreadable[path] = str(err).splitlines()[0][:200]
    return rows, unreadable


@dataclass
class Tracked:
    """A pipeline the module ingests into and reads back after ``stop``."""

    name: str
    sink: str
    id_sql: str = "id"
    value_sql: str | None = None  # read back and compared with Ledger.values
    normalize: Callable[[tuple[Any, ...]], Any] = lambda row: row


@dataclass
class Lake:
    """What ``stop`` and DuckDB found: ids delivered, values, files nobody can read."""

    delivered: Counter[int] = field(default_factory=Counter)
    values: dict[int, Any] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    not_stopped: dict[str, str] = field(default_factory=dict)
    values_missing: dict[str, str] = field(default_factory=dict)  # pipeline -> DuckDB's error


class Ledger:
    """Acknowledged ids by case, ids that must not be delivered, expected values."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.pipelines: dict[str, Tracked] = {}
        self.acked: dict[str, set[int]] = {}
        self.refused: set[int] = set()
        self.values: dict[int, Any] = {}

    def ids(self, n: int) -> list[int]:
        return [next(self._ids) for _ in range(n)]

    def pipeline(self, server: LiveServer, name: str, definition: dict[str, Any], *,
                 id_sql: str = "id", value_sql: str | None = None,
                 normalize: Callable[[tuple[Any, ...]], Any] | None = None) -> Tracked:
        """Create and start ``name`` once; later calls return it."""
        if name not in self.pipelines:
            created = server.ok("create", {"name": name, **definition})
            server.ok("start", {"name": name})
            self.pipelines[name] = Tracked(name, sink_dir(created["sink"]["uri"]), id_sql,
                                           value_sql, normalize or (lambda row: row))
        return self.pipelines[name]

    def ack(self, case: str, ids: Iterable[int]) -> None:
        self.acked.setdefault(case, set()).update(ids)

    def refuse(self, ids: Iterable[int]) -> None:
        self.refused.update(ids)

    def stop_and_read(self, server: LiveServer, timeout_s: float = 90.0) -> Lake:
        """Stop every pipeline at once, then read each one's files back."""
        lake = Lake()

        def stop(name: str) -> None:
            response = server.call("stop", {"name": name}, options={"timeout": timeout_s * 1000},
                                   timeout=timeout_s + 30)
            if response.status_code != 200:
                lake.not_stopped[name] = response.text[:300]

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(stop, self.pipelines))
        for tracked in self.pipelines.values():
            files = lake_files(tracked.sink)
            rows, unreadable = read_lake(files, tracked.id_sql)
            lake.unreadable.update(unreadable)
            lake.delivered.update(row[0] for row in rows)
            if tracked.value_sql:
                try:
                    rows, _unreadable = read_lake(files, f"{tracked.id_sql}, {tracked.value_sql}",
                                                  strict=True)
                except duckdb.Error as err:
                    lake.values_missing[tracked.name] = str(err).splitlines()[0][:200]
                    continue
                lake.values.update((row[0], tracked.normalize(row[1:])) for row in rows)
        return lake
