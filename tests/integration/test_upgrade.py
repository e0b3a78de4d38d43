"""Today's server on a data directory of 78d94f8 (SQLite buffers): nothing accepted is lost.

The fixture (tests/fixtures/upgrade_78d94f8, made by that release's real
server) holds ``orders`` with epochs 1-2 committed, epoch 3 planned over seq 5
with its Parquet file written but never committed (its worker was killed),
seqs 6-7 acknowledged and unplanned, and 5 dead letters; and ``clicks``,
paused, with 20 events and 1 dead letter. ``serve`` upgrades the buffers; a
``resume`` and ``stop`` must then leave every acknowledged event in the
Parquet files exactly once, the committed files untouched.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from tests.live import LiveServer, query
from tests.upgrade_fixture import copy_fixture, crash_upgrade, expected


def _files(lake: str) -> dict[str, str]:
    return {os.path.relpath(p, lake): hashlib.sha256(Path(p).read_bytes()).hexdigest()
            for p in glob.glob(os.path.join(lake, "*", "*.parquet"))}


def _written(data_dir: str, name: str) -> Counter[int]:
    rows = query(f"SELECT seq FROM read_parquet('{data_dir}/lake/{name}/**/*.parquet')")
    return Counter(r[0] for r in rows)


def test_serve_upgrades_an_old_data_dir_and_writes_every_acknowledged_event_once(
        tmp_path: Any) -> None:
    _serve_and_check(copy_fixture(str(tmp_path / "data")))


def test_serve_after_an_upgrade_killed_past_its_commit_point_writes_every_event_once(
        tmp_path: Any) -> None:
    """The log in place, the ledger still the old file: serve finishes the upgrade."""
    data_dir = copy_fixture(str(tmp_path / "data"))
    crash_upgrade(data_dir, "log_in_place")
    _serve_and_check(data_dir)


def _serve_and_check(data_dir: str) -> None:
    want = expected()
    lake = os.path.join(data_dir, "lake")
    committed_files = {path: digest for path, digest in _files(lake).items()
                       if "part-0000000003" not in path}
    assert len(committed_files) == 2
    server = LiveServer(data_dir).start()
    try:
        for name in ("orders", "clicks"):
            got = server.ok("get", {"name": name})
            old = want["counters"][name]
            assert {k: got[k] for k in ("events_in", "bytes_in", "events_rejected")} == {
                k: old[k] for k in ("events_in", "bytes_in", "events_rejected")}
            letters = server.ok("dead_letters", {"name": name})["dead_letters"]
            assert len(letters) == old["events_rejected"]
            assert {letter["code"] for letter in letters} == {"type_mismatch"}
            logs = server.ok("logs", {"name": name})["logs"]
            assert sum("event buffer upgraded" in e["message"] for e in logs) == 1, logs

        # New events after the upgrade go on from the log's last sequence number.
        response = server.post_ndjson("orders", b'{"seq": 9000, "payload": "new"}')
        assert response.status_code == 200 and response.json()["data"]["accepted"] == 1
        want["acked"]["orders"].append(9000)

        server.ok("resume", {"name": "clicks"})
        for name in ("orders", "clicks"):
            stopped = server.ok("stop", {"name": name}, options={"timeout": 120_000})
            assert stopped["status"] == "stopped"
            written = _written(data_dir, name)
            assert sorted(written) == sorted(want["acked"][name])
            assert max(written.values()) == 1
            assert server.ok("get", {"name": name})["backlog_events"] == 0

        after = _files(lake)
        for path, digest in committed_files.items():
            assert after[path] == digest  # committed before the upgrade: not rewritten
        # Epoch 3 ran again over the same events, over its killed attempt's file.
        assert query(f"SELECT count(*) FROM read_parquet('{lake}/orders/"
                     f"part-0000000003-*.parquet')") == [(30,)]
        assert not glob.glob(os.path.join(data_dir, "tmp", "*.manifest.json"))
    finally:
        server.stop()
