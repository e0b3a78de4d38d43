"""The data directory of 78d94f8 in ``tests/fixtures/upgrade_78d94f8``, copied for a test.

``scripts/make_upgrade_fixture.sh`` made it with that release's real server
(``scripts/upgrade_fixture_driver.py`` says how). Its catalog names absolute
paths under the directory it was made in (``ORIGINAL_DATA_DIR``), as a real
catalog does; :func:`copy_fixture` moves them to the copy, as a user moving
their data directory would have to.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

__all__ = ["FIXTURE", "copy_fixture", "crash_upgrade", "expected", "grow_old_buffer"]

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "upgrade_78d94f8")


def expected() -> dict[str, Any]:
    """What the old server acknowledged (``acked``), had committed, and counted."""
    with open(os.path.join(FIXTURE, "expected.json")) as f:
        return json.load(f)  # type: ignore[no-any-return]


def copy_fixture(destination: str) -> str:
    """Copy the old data directory to ``destination`` (made here); return it."""
    with open(os.path.join(FIXTURE, "ORIGINAL_DATA_DIR")) as f:
        original = f.read().strip()
    shutil.copytree(os.path.join(FIXTURE, "data"), destination)
    with closing(sqlite3.connect(os.path.join(destination, "pipeline-do.sqlite"))) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            for _, column, kind, *_ in con.execute(f"PRAGMA table_info({table})").fetchall():
                if kind.upper() in ("TEXT", "JSON") or kind.upper().startswith("VARCHAR"):
                    con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                                (original, destination))
        con.commit()
    return destination


_CRASH_AT = """
import os, sys
from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.runners.local.upgrade import upgrade_data_dir

data_dir, crash_at, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = []

def step(name):
    seen.append(name)
    if name == crash_at and seen.count(name) == nth:
        os._exit(9)

store = Store(default_database_url(data_dir))
store.create_all()
upgrade_data_dir(store, data_dir, step=step)
"""


def crash_upgrade(data_dir: str, crash_at: str, nth: int = 1) -> None:
    """Upgrade ``data_dir`` in a child process that dies (``os._exit(9)``, no cleanup,
    like ``kill -9``) right after the ``nth`` time the upgrade completes ``crash_at``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    crashed = subprocess.run([sys.executable, "-c", _CRASH_AT, data_dir, crash_at, str(nth)],
                             env=env, capture_output=True, timeout=120, check=False)
    assert crashed.returncode == 9, crashed.stderr.decode()[-2000:]


def grow_old_buffer(path: str, requests: int, events: int) -> list[int]:
    """Append ``requests`` rows of ``events`` events to an old buffer, as the old
    server's rows are (one Arrow IPC stream each; ``seq`` values go on from 100,000
    and are unique); return the ``seq`` values added, in order."""
    added: list[int] = []
    with closing(sqlite3.connect(path)) as con:
        (last,) = con.execute("SELECT max(seq) FROM batches").fetchone()
        rows = []
        for k in range(requests):
            first = 100_000 + k * events
            table = pa.table({"seq": pa.array(range(first, first + events), pa.int64()),
                              "payload": pa.array([f"grown-{i:08d}" for i in range(events)])})
            sink = pa.BufferOutputStream()
            with ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            blob = sink.getvalue().to_pybytes()
            rows.append((last + 1 + k, events, len(blob), time.time(), blob))
            added.extend(range(first, first + events))
        con.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?)", rows)
        con.execute("UPDATE totals SET events_in = events_in + ?, bytes_in = bytes_in + ?",
                    (requests * events, sum(r[2] for r in rows)))
        con.commit()
    return added
