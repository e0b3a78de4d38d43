"""Runaway user SQL on the real server: clean errors, and nothing else notices.

The server runs with small bounds (256 MB, 3 s) so each runaway ends in
seconds. Dry runs of hostile SQL answer 400 on ``sql`` with the bound in
``details.reason`` while ``/healthz`` and another pipeline's ingest keep
answering and the API worker's memory stays where it was; an epoch of
hostile SQL fails with the bound in ``last_error`` while another pipeline
writes its events.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests

from tests.live import LiveServer, query, wait_for

SCHEMA = [{"name": "i", "type": "int64", "required": True}, {"name": "country", "type": "string"}]
BOUND_REASONS = {"memory_limit", "timeout", "output_limit"}
HOSTILE = [
    "SELECT a.*, b.i AS j, c.i AS k FROM events a, events b, events c ORDER BY a.i + b.i + c.i",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, range(2)) "
    "SELECT count(*) AS n FROM t",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT max(n) AS n FROM t",
    "SELECT list(range) AS l FROM range(1000000000) GROUP BY range % 2",
    "SELECT repeat(a.country, 1000000) AS s FROM events a, events b",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[LiveServer]:
    live = LiveServer(str(tmp_path_factory.mktemp("runaway")),
                      extra_env={"PIPELINE_DO_SQL_MEMORY_MB": "256",
                                 "PIPELINE_DO_SQL_TIMEOUT_SECONDS": "3",
                                 "PIPELINE_DO_DRY_RUN_TIMEOUT_SECONDS": "3"},
                      args=("--workers", "1", "--job-workers", "1"))
    live.start()
    yield live
    live.kill()


def _events(first: int, count: int) -> bytes:
    return b"".join(json.dumps({"i": i, "country": "de"}).encode() + b"\n"
                    for i in range(first, first + count))


def _api_workers(server: LiveServer) -> list[psutil.Process]:
    assert server.process is not None
    return [p for p in psutil.Process(server.process.pid).children(recursive=True)
            if "gunicorn" in " ".join(p.cmdline())]


class _Bystander(threading.Thread):
    """Polls /healthz and ingests into another pipeline until told to stop."""

    def __init__(self, server: LiveServer, pipeline: str) -> None:
        super().__init__(daemon=True)
        self.server, self.pipeline = server, pipeline
        self.statuses: list[int] = []
        self.accepted = 0
        self.done = threading.Event()

    def run(self) -> None:
        for round_no in range(10_000):
            if self.done.is_set():
                return
            health = requests.get(self.server.url + "/healthz", timeout=30)
            ingest = self.server.post_ndjson(self.pipeline, _events(round_no * 10, 10))
            self.statuses += [health.status_code, ingest.status_code]
            if ingest.status_code == 200:
                self.accepted += ingest.json()["data"]["accepted"]
            self.done.wait(0.2)


def test_hostile_dry_runs_answer_a_clean_error_and_the_server_keeps_serving(
        server: LiveServer) -> None:
    server.ok("create", {"name": "victim", "schema": SCHEMA})
    server.ok("create", {"name": "bystander", "schema": SCHEMA})
    assert server.post_ndjson("victim", _events(0, 2000)).status_code == 200
    assert server.ok("transform", {"name": "victim", "sql": "SELECT i FROM events ORDER BY i",
                                   "dry_run": True, "limit": 3})["rows"] == [
        {"i": 1997}, {"i": 1998}, {"i": 1999}]  # over the most recent events
    workers = _api_workers(server)
    rss_before = sum(p.memory_info().rss for p in workers)
    bystander = _Bystander(server, "bystander")
    bystander.start()
    try:
        for sql in HOSTILE:
            reply = server.call("transform", {"name": "victim", "sql": sql, "dry_run": True,
                                              "limit": 2000})
            body = reply.json()
            assert reply.status_code == 400, body
            error = body["error"]
            assert error["code"] == "VALIDATION_ERROR" and error["details"]["field"] == "sql"
            assert error["details"]["reason"] in BOUND_REASONS, error
            assert "Traceback" not in error["message"] and server.data_dir not in error["message"]
    finally:
        bystander.done.set()
        bystander.join(60)
    rss_after = sum(p.memory_info().rss for p in _api_workers(server))
    print(f"API processes' RSS {rss_before >> 20} MB before, {rss_after >> 20} MB after")
    assert [p.pid for p in _api_workers(server)] == [p.pid for p in workers]  # none died
    assert rss_after - rss_before < 100 << 20
    assert bystander.statuses and set(bystander.statuses) == {200}
    assert server.ok("get", {"name": "bystander"})["events_in"] == bystander.accepted
    refused = server.call("transform", {"name": "victim", "dry_run": True,
                                        "sql": "SELECT * FROM duckdb_settings()"}).json()["error"]
    assert refused["details"]["reason"] == "refused" and "duckdb_settings" in refused["message"]
    got = server.ok("get", {"name": "victim"})
    assert got["version"] == 1 and got["sql"] == "SELECT * FROM events"


def test_an_epoch_of_runaway_sql_fails_cleanly_while_another_pipeline_writes(
        server: LiveServer) -> None:
    server.ok("create", {"name": "exploding", "schema": SCHEMA,
                         "sql": "SELECT a.*, b.i AS j, c.i AS k FROM events a, events b, events c",
                         "sink": {"roll": {"interval_seconds": 0.2}}})
    server.ok("create", {"name": "steady", "schema": SCHEMA,
                         "sink": {"roll": {"interval_seconds": 0.2}}})
    assert server.post_ndjson("exploding", _events(0, 1000)).status_code == 200
    assert server.post_ndjson("steady", _events(0, 500)).status_code == 200
    server.ok("start", {"name": "exploding"})
    server.ok("start", {"name": "steady"})
    failed = wait_for(lambda: server.ok("monitor", {"name": "exploding"})["last_error"],
                      timeout=120, message="the runaway epoch's error")
    assert "SQL_ERROR: the SQL's result is larger than its 64 MB limit" in failed, failed
    stopped = server.ok("stop", {"name": "steady"}, options={"timeout": 120_000})
    assert stopped["status"] == "stopped"
    lake = f"{server.data_dir}/lake/steady/**/*.parquet"
    assert query(f"SELECT count(DISTINCT i) FROM read_parquet('{lake}')") == [(500,)]
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    server.ok("delete", {"name": "exploding"})
