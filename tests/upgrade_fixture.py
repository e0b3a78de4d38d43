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
from contextlib import closing
from typing import Any

__all__ = ["FIXTURE", "copy_fixture", "expected"]

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
