"""The whole path on embedded defaults, through the real server.

create → start → ingest 100,000 events over HTTP (bad records mixed in) →
stop → read the Parquet files back with DuckDB.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb

from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from tests.live import wait_for

SCHEMA = [
    {"name": "user_id", "type": "int64", "required": True},
    {"name": "country", "type": "string"},
    {"name": "amount", "type": "float64"},
    {"name": "ts", "type": "timestamp", "required": True},
]
SQL = ("SELECT *, upper(country) AS country_uc, amount * 1.5 AS amount_x "
       "FROM events WHERE amount > 20")
START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def make_events(first_id: int, count: int, rng: random.Random) -> list[dict[str, Any]]:
    events = []
    for user_id in range(first_id, first_id + count):
        ts = START + timedelta(seconds=rng.randrange(0, 4 * 86400))
        ts_value: Any = ts.isoformat().replace("+00:00", "Z")
        if user_id % 7 == 0:
            ts_value = int(ts.timestamp() * 1000)  # epoch milliseconds are accepted too
        events.append({"user_id": user_id, "country": rng.choice(["de", "fr", "us", "br"]),
                       "amount": round(rng.uniform(0, 100), 2), "ts": ts_value})
    return events


def send_orders(server: Any, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ingest 100,000 orders in batches of 5,000 with four bad records in each.

    Three batches in four go to the fast NDJSON path, the fourth to the
    ``ingest`` operation as a JSON array; both must report the same
    rejections. Returns the accepted events and every rejection reported.
    """
    rng = random.Random(7)
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    batch_size = 5_000
    for batch_no, first in enumerate(range(0, 100_000, batch_size)):
        events = make_events(first, batch_size, rng)
        lines = [json.dumps(e).encode() for e in events]
        bad = {3: b'{"user_id": "not a number", "ts": "2026-03-01T00:00:00Z"}',
               10: b'{"country": "de", "ts": "2026-03-01T00:00:00Z"}',
               11: b'{"user_id": 5, "ts": "2026-03-01T00:0',
               12: b'{"user_id": 6, "ts": "yesterday"}'}
        for index in sorted(bad):
            lines.insert(index, bad[index])
        if batch_no % 4 == 3:
            objects = [json.loads(line) if not line.endswith(b"0:0") else "oops"
                       for line in lines]
            data = server.ok("ingest", {"name": name, "events": objects})
        else:
            response = server.post_ndjson(name, b"\n".join(lines))
            assert response.status_code == 200, response.text
            data = response.json()["data"]
        assert data["accepted"] == batch_size
        codes = {r["index"]: r["code"] for r in data["rejected"]}
        assert codes == {3: "type_mismatch", 10: "missing_field", 12: "type_mismatch",
                         11: "parse_failure"}, data["rejected"]
        accepted.extend(events)
        rejected.extend(data["rejected"])
    return accepted, rejected


def check_orders(con: duckdb.DuckDBPyConnection, accepted: list[dict[str, Any]]) -> int:
    """Check the view ``out`` holds exactly the accepted orders the SQL keeps; return that count."""
    expected = [e for e in accepted if e["amount"] > 20]
    [(count, distinct)] = con.execute("SELECT count(*), count(DISTINCT user_id) FROM out").fetchall()
    assert count == len(expected) == distinct
    assert con.execute("SELECT sum(user_id) FROM out").fetchall() == \
        [(sum(e["user_id"] for e in expected),)]
    wrong = con.execute(
        "SELECT count(*) FROM out WHERE amount_x <> amount * 1.5 "
        "OR country_uc <> upper(country) OR amount <= 20").fetchall()
    assert wrong == [(0,)]
    misplaced = con.execute(
        "SELECT count(*) FROM out WHERE CAST(dt AS DATE) <> CAST(ts AT TIME ZONE 'UTC' AS DATE) "
        "OR _event_time <> ts").fetchall()
    assert misplaced == [(0,)]
    # Every event's time survived, ISO strings and epoch milliseconds alike.
    by_id = {e["user_id"]: e["ts"] for e in expected[:2000]}
    rows = con.execute("SELECT user_id, epoch_ms(ts) FROM out WHERE user_id < 10000").fetchall()
    for user_id, millis in rows:
        if user_id in by_id:
            want = by_id[user_id]
            if isinstance(want, str):
                want = int(datetime.fromisoformat(want.replace("Z", "+00:00")).timestamp() * 1000)
            assert millis == want
    return len(expected)


def test_ingest_transform_and_write_parquet_exactly_once(live_server: Any) -> None:
    server = live_server
    created = server.ok("create", {
        "name": "orders", "schema": SCHEMA, "event_time_field": "ts", "sql": SQL,
        "sink": {"partition_by": "dt=%Y-%m-%d", "roll": {"interval_seconds": 1}}})
    assert created["status"] == "created"
    assert server.ok("start", {"name": "orders"})["status"] == "running"
    accepted, rejected = send_orders(server, "orders")

    stopped = server.ok("stop", {"name": "orders"}, options={"timeout": 120_000})
    assert stopped["status"] == "stopped"
    lake = f"{server.data_dir}/lake/orders"
    con = duckdb.connect()
    con.execute(f"CREATE VIEW out AS SELECT * FROM read_parquet('{lake}/**/*.parquet', "
                "hive_partitioning = true)")
    written = check_orders(con, accepted)

    files = {f["path"] for f in stopped["files"]}
    assert all(path.startswith(lake) for path in files)
    info = server.ok("get", {"name": "orders"})
    assert info["events_in"] == 100_000
    assert info["events_rejected"] == len(rejected) == 80
    assert info["events_out"] == written
    assert info["backlog_events"] == 0
    # The job manager's release thread empties the buffer of committed rows
    # and records each request's ack-to-commit latency as it goes.
    buffer = EventBuffer(buffer_path(f"{server.data_dir}", created["id"]))
    wait_for(lambda: buffer.backlog(0).events == 0, timeout=180, message="buffer emptied")
    assert buffer.latency_percentiles(since=0.0)["p99"] is not None
    buffer.close()
