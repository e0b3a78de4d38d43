"""A stop's flush runs on every epoch worker at once and still commits in order."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import duckdb

from control_api.devserver import LiveServer
from tests.conftest import ADMIN_KEY

SCHEMA = [{"name": "n", "type": "int64", "required": True}]


def test_stop_flushes_on_both_workers_and_commits_every_event_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    server = LiveServer(str(data_dir), api_key=ADMIN_KEY, args=("--job-workers", "2")).start()
    try:
        # Nothing rolls before the stop: the whole backlog is the flush's.
        server.ok("create", {"name": "flush", "schema": SCHEMA, "sql": "SELECT n FROM events",
                             "sink": {"roll": {"interval_seconds": 3600}}})
        server.ok("start", {"name": "flush"})
        for first in range(0, 40_000, 1_000):
            lines = "\n".join(f'{{"n": {i}}}' for i in range(first, first + 1_000)).encode()
            assert server.post_ndjson("flush", lines).json()["data"]["accepted"] == 1_000
        stopped = server.ok("stop", {"name": "flush"}, options={"timeout": 120_000})
        assert stopped["status"] == "stopped"
    finally:
        server.kill()

    with sqlite3.connect(data_dir / "pipeline-do.sqlite") as con:
        epochs: list[Any] = con.execute(
            "SELECT epoch, range_start, range_end, events, planned_at, committed_at, status "
            "FROM epochs ORDER BY epoch").fetchall()
    assert len(epochs) == 2 and all(e[6] == "committed" for e in epochs)
    assert [e[3] for e in epochs] == [20_000, 20_000]  # the backlog cut in two
    (_, _, end_1, _, _, committed_1, _), (_, start_2, _, _, planned_2, committed_2, _) = epochs
    assert start_2 == end_1  # contiguous ranges
    assert planned_2 < committed_1 < committed_2  # ran alongside epoch 1, committed after it
    rows = duckdb.connect().execute(f"SELECT count(*), count(DISTINCT n), min(n), max(n) FROM "
                      f"read_parquet('{data_dir}/lake/flush/**/*.parquet')").fetchone()
    assert rows == (40_000, 40_000, 0, 39_999)
