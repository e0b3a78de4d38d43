"""Retention + replay end to end, on the real server over REST.

Events are ingested over HTTP in rounds, committed by the job manager's real
epochs, the SQL is changed with ``transform``, and ``replay`` runs the first
round again into a new prefix: the replayed Parquet files (read back with
DuckDB) hold every event of the range exactly once under the new SQL, and the
live files are untouched byte for byte. "The first hour" is the first round
here: its end is a time taken between two rounds' requests (``until``), so
the range is cut by real ingest times without waiting an hour.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from tests.control_api.conftest import WEBHOOK_ENV, Receiver, make_key
from tests.live import LiveServer, query, wait_for

SCHEMA = [{"name": "seq", "type": "int64", "required": True},
          {"name": "country", "type": "string"}]
NEW_SQL = "SELECT seq, upper(country) AS country, seq * 2 AS doubled FROM events"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _send(server: LiveServer, name: str, first: int, count: int) -> None:
    body = b"\n".join(json.dumps({"seq": i, "country": "de"}).encode()
                      for i in range(first, first + count))
    response = server.post_ndjson(name, body)
    assert response.status_code == 200 and response.json()["data"]["accepted"] == count, \
        response.text


def _committed(server: LiveServer, name: str, events: int, timeout: float = 120) -> None:
    wait_for(lambda: server.ok("get", {"name": name})["events_out"] >= events,
             timeout=timeout, interval=0.2, message=f"{events} events committed")


def _digests(directory: str) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
            for p in glob.glob(os.path.join(directory, "**", "*.parquet"), recursive=True)
            if "/_tmp/" not in p}


def _replay(server: LiveServer, name: str, replay_id: str) -> dict[str, Any]:
    [found] = [r for r in server.ok("monitor", {"name": name})["replays"] if r["id"] == replay_id]
    return found  # type: ignore[no-any-return]


def _wait_done(server: LiveServer, name: str, replay_id: str, timeout: float = 180) -> Any:
    return wait_for(lambda: (r := _replay(server, name, replay_id))["status"] == "done" and r,
                    timeout=timeout, interval=0.25, message=f"replay {replay_id} done")


def _rows(directory: str, columns: str) -> list[tuple[Any, ...]]:
    return query(f"SELECT {columns} FROM read_parquet('{directory}/**/*.parquet', "
                 "union_by_name=true)")


def test_replay_of_the_first_round_into_a_new_prefix_while_live_ingest_goes_on(
        tmp_path: Path) -> None:
    receiver = Receiver()
    server = LiveServer(str(tmp_path), extra_env=WEBHOOK_ENV).start()
    try:
        hook = requests.post(server.url + "/webhooks", timeout=30,
                             headers={"Authorization": f"Bearer {server.api_key}"},
                             json={"url": receiver.url, "events": ["pipeline.written"]})
        assert hook.status_code == 200, hook.text
        created = server.ok("create", {"name": "clicks", "schema": SCHEMA,
                                       "retention": {"seconds": 86400},
                                       "sink": {"roll": {"interval_seconds": 0.2,
                                                         "max_events": 2000}}})
        server.ok("start", {"name": "clicks"})
        for first in range(0, 3000, 1000):  # round 1: "the first hour"
            _send(server, "clicks", first, 1000)
        _committed(server, "clicks", 3000)
        time.sleep(0.05)
        until = time.time()
        time.sleep(0.05)
        for first in range(3000, 6000, 1000):  # round 2
            _send(server, "clicks", first, 1000)
        _committed(server, "clicks", 6000)
        lake = os.path.join(str(tmp_path), "lake")
        live_before = _digests(os.path.join(lake, "clicks"))

        assert server.ok("transform", {"name": "clicks", "sql": NEW_SQL})["version"] == 2
        preview = server.ok("replay", {"name": "clicks", "until": _iso(until), "dry_run": True,
                                       "limit": 3})
        assert preview["rows"] == [{"seq": i, "country": "DE", "doubled": 2 * i}
                                   for i in range(3)]
        started = server.ok("replay", {"name": "clicks", "until": _iso(until),
                                       "sql_version": 2, "target": {"prefix": "clicks-v2"}})
        assert started["status"] == "running" and started["events_total"] == 3000
        assert {k: started["range"][k] for k in ("first_offset", "last_offset", "since")} \
            == {"first_offset": 1, "last_offset": 3, "since": None}  # three requests
        for first in range(6000, 9000, 1000):  # round 3, live, while the replay runs
            _send(server, "clicks", first, 1000)
        done = _wait_done(server, "clicks", started["id"])
        _committed(server, "clicks", 9000)

        assert done["events_done"] == 3000 and done["epochs_done"] == done["epochs_total"]
        replayed = _rows(os.path.join(lake, "clicks-v2"), "seq, country, doubled")
        assert Counter(r[0] for r in replayed) == Counter(range(3000))  # each exactly once
        assert all(country == "DE" and doubled == 2 * seq for seq, country, doubled in replayed)
        live_after = _digests(os.path.join(lake, "clicks"))
        assert {p: live_after.get(p) for p in live_before} == live_before  # byte for byte
        live = Counter(r[0] for r in _rows(os.path.join(lake, "clicks"), "seq"))
        assert live == Counter(range(9000))  # the live pipeline went on, each event once

        def replay_written() -> list[dict[str, Any]]:
            return [e["data"] for e in receiver.events(created["id"])
                    if e["type"] == "pipeline.written" and e["data"].get("replay")]
        written = wait_for(lambda: len(replay_written()) >= done["files_written"] and
                           replay_written(), timeout=180, message="replay pipeline.written")
        assert {w["replay"] for w in written} == {started["id"]}
        assert all("/clicks-v2/" in w["path"] for w in written)
        assert sum(w["rows"] for w in written) == 3000
    finally:
        server.kill()
        receiver.close()


def test_kill_9_during_a_replay_then_restart_replays_every_event_exactly_once(
        tmp_path: Path) -> None:
    server = LiveServer(str(tmp_path)).start()
    try:
        server.ok("create", {"name": "crash", "schema": SCHEMA, "retention": {"bytes": 1 << 30},
                             "sink": {"roll": {"interval_seconds": 0.2, "max_events": 5000}}})
        for first in range(0, 60_000, 5000):
            _send(server, "crash", first, 5000)
        server.ok("start", {"name": "crash"})
        assert server.ok("stop", {"name": "crash"}, options={"timeout": 120_000})["status"] \
            == "stopped"
        started = server.ok("replay", {"name": "crash", "sql": NEW_SQL,
                                       "target": {"prefix": "crash-v2"}})
        assert started["epochs_total"] == 12
        seen = wait_for(lambda: (r := _replay(server, "crash", started["id"]))["epochs_done"] >= 1
                        and r, timeout=120, interval=0.05, message="a replay epoch committed")
        server.kill()  # kill -9 of the whole group: API, job manager, epoch workers
    finally:
        server.kill()
    assert seen["status"] == "running"
    server = LiveServer(str(tmp_path)).start()
    try:
        done = _wait_done(server, "crash", started["id"])
        assert done["events_done"] == 60_000 and done["rows_out"] == 60_000
        replayed = _rows(os.path.join(str(tmp_path), "lake", "crash-v2"), "seq, doubled")
        assert Counter(r[0] for r in replayed) == Counter(range(60_000))  # exactly once
        assert all(doubled == 2 * seq for seq, doubled in replayed)
        assert not glob.glob(os.path.join(str(tmp_path), "lake", "crash-v2", "_tmp", "*", "*"))
    finally:
        server.kill()


def test_a_range_no_longer_retained_is_refused_saying_what_is_retained_and_scope_is_admin(
        tmp_path: Path) -> None:
    server = LiveServer(str(tmp_path)).start()
    try:
        # The default retention: committed events go as soon as their segment is sealed.
        server.ok("create", {"name": "brief", "schema": SCHEMA,
                             "sink": {"roll": {"interval_seconds": 0.2}}})
        since = time.time() - 1
        server.ok("start", {"name": "brief"})
        _send(server, "brief", 0, 100)
        _committed(server, "brief", 100)
        _send(server, "brief", 100, 100)
        _committed(server, "brief", 200)

        def refused() -> Any:
            response = server.call("replay", {"name": "brief", "since": _iso(since)})
            return response.status_code == 400 and response.json()
        body = wait_for(refused, timeout=30, interval=0.2, message="the range released")
        error = body["error"]
        assert error["code"] == "VALIDATION_ERROR" and error["details"]["field"] == "since"
        assert "no longer" in error["message"] and "retain" in error["message"]
        assert "earliest_retained_offset" in error["details"]
        response = server.call("replay", {"name": "brief", "first_offset": 1})
        assert response.status_code == 400
        assert response.json()["error"]["details"]["field"] == "first_offset"
        response = server.call("replay", {"name": "brief", "target": {"prefix": "../x"}})
        assert response.status_code == 400
        assert response.json()["error"]["details"]["field"] == "target.prefix"
        forbidden = server.call("replay", {"name": "brief"}, key=make_key(server, "read"))
        assert forbidden.status_code == 403  # admin's, like transform
        assert forbidden.json()["error"]["code"] == "AUTHORIZATION_ERROR"
    finally:
        server.kill()
