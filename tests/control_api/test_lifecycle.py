"""Pause/resume, hot SQL, dry run, monitor, metrics and logs through the real server.

Row counts come from reading the written Parquet files back with DuckDB.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from tests.control_api.conftest import Api, read_rows, sink_files, wait_for

ROLL = {"roll": {"interval_seconds": 0.5}}
SCHEMA = [{"name": "i", "type": "int64", "required": True}]


def _create(api: Api, name: str, sql: str = "SELECT * FROM events",
            schema: list[dict[str, Any]] | None = SCHEMA) -> tuple[str, str]:
    data = api.ok("create", {"name": name, "schema": schema, "sql": sql, "sink": ROLL})
    return data["id"], data["sink"]["uri"]


def _ingest(api: Api, name: str, first: int, count: int) -> None:
    response = api.ndjson(name, [{"i": i} for i in range(first, first + count)])
    assert response.status_code == 200 and response.json()["data"]["accepted"] == count


def test_pause_buffers_without_files_and_resume_writes_them(
        api: Api, unique: Callable[[str], str]) -> None:
    name, control = unique("paused"), unique("control")
    _, sink = _create(api, name)
    _, control_sink = _create(api, control)
    api.ok("start", {"name": name})
    api.ok("start", {"name": control})
    _ingest(api, name, 0, 100)
    wait_for(lambda: len(read_rows(sink)) == 100, message="the first 100 rows")
    files_before = sink_files(sink)

    assert api.ok("pause", {"name": name})["status"] == "paused"
    _ingest(api, name, 100, 50)  # accepted while paused
    _ingest(api, control, 0, 10)
    # The running control pipeline getting its file proves epochs were due meanwhile.
    wait_for(lambda: len(read_rows(control_sink)) == 10, message="the control pipeline's file")
    assert sink_files(sink) == files_before
    monitor = api.ok("monitor", {"name": name})
    assert monitor["status"] == "paused" and monitor["backlog_events"] == 50
    assert monitor["events_in"] == 150 and monitor["events_out"] == 100

    conflict = api.call("pause", {"name": name})
    assert conflict.status_code == 409
    assert api.ok("resume", {"name": name})["status"] == "running"
    wait_for(lambda: len(read_rows(sink)) == 150, message="the buffered rows after resume")
    assert sorted(r[0] for r in read_rows(sink, "i")) == list(range(150))
    assert api.call("resume", {"name": name}).status_code == 409
    stopped = api.ok("stop", {"name": name})
    assert stopped["status"] == "stopped" and stopped["flushed_events"] == 0
    assert api.call("pause", {"name": name}).status_code == 409
    assert api.ok("start", {"name": name})["status"] == "running"
    api.ok("stop", {"name": control})


def test_hot_transform_switches_at_an_epoch_boundary_losing_nothing(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("hot")
    pid, sink = _create(api, name, "SELECT i, 1 AS v FROM events")
    api.ok("start", {"name": name})
    _ingest(api, name, 0, 100)
    wait_for(lambda: read_rows(sink), message="a first file under SQL version 1")

    done = threading.Event()
    errors: list[BaseException] = []

    def keep_ingesting() -> None:
        try:
            for batch in range(1, 31):
                _ingest(api, name, batch * 100, 100)
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=keep_ingesting)
    thread.start()
    result = api.ok("transform", {"name": name, "sql": "SELECT i, 2 AS v FROM events"})
    assert result == {"version": 2, "output_schema": [{"name": "i", "type": "int64"},
                                                      {"name": "v", "type": "int32"}]}
    thread.join()
    assert not errors
    _ingest(api, name, 3100, 100)  # surely after the switch
    stopped = api.ok("stop", {"name": name})
    assert stopped["status"] == "stopped"

    rows = read_rows(sink, "i, v")
    ids = sorted(i for i, _ in rows)
    assert ids == list(range(3200))  # nothing lost, nothing written twice
    v1 = [i for i, v in rows if v == 1]
    v2 = [i for i, v in rows if v == 2]
    assert v1 and v2 and max(v1) < min(v2)  # one clean cut, at an epoch boundary

    got = api.ok("get", {"name": name})
    assert got["version"] == 2 and got["sql"] == "SELECT i, 2 AS v FROM events"
    with sqlite3.connect(f"{api.server.data_dir}/pipeline-do.sqlite") as con:
        versions = con.execute("SELECT version, sql FROM sql_versions WHERE pipeline_id = ? "
                               "ORDER BY version", (pid,)).fetchall()
    assert versions == [(1, "SELECT i, 1 AS v FROM events"), (2, "SELECT i, 2 AS v FROM events")]

    # monitor's counters are the rows and files actually in the sink
    monitor = api.ok("monitor", {"name": name, "window_seconds": 3600})
    files = sink_files(sink)
    assert monitor["events_in"] == 3200 and monitor["events_out"] == len(rows)
    assert monitor["files_written"] == len(files)
    assert monitor["bytes_out"] == sum(os.path.getsize(f) for f in files)
    assert monitor["backlog_events"] == 0 and monitor["errors"] == 0
    assert monitor["epochs"] >= 2 and monitor["last_commit_at"]
    assert monitor["latency_ms"]["p50"] is not None
    assert monitor["latency_ms"]["p50"] <= monitor["latency_ms"]["p99"]
    assert monitor["throughput"]["in_eps"] > 0 and monitor["throughput"]["out_eps"] > 0
    assert set(monitor) >= {"status", "events_in", "events_rejected", "events_out", "bytes_in",
                            "bytes_out", "files_written", "epochs", "backlog_events",
                            "throughput", "latency_ms", "errors", "last_error",
                            "last_commit_at"}

    metrics = api.get("/metrics").text
    label = f'pipeline="{name}",pipeline_id="{pid}"'
    assert f"pipeline_do_events_out_total{{{label}}} {float(len(rows))}" in metrics
    assert f"pipeline_do_files_written_total{{{label}}} {float(len(files))}" in metrics
    assert f"pipeline_do_events_in_total{{{label}}} 3200.0" in metrics
    assert f'pipeline_do_pipeline_status{{{label},status="stopped"}} 1.0' in metrics

    logs = api.ok("logs", {"name": name, "limit": 1000})["logs"]
    committed = [e for e in logs if "committed" in e["message"]]
    assert committed and all(e["epoch"] is not None and e["level"] == "info" for e in committed)
    assert any("sql version 2" in e["message"] for e in logs)


def test_dry_run_shows_the_new_sql_over_buffered_events_and_changes_nothing(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("dry")
    _create(api, name)
    _ingest(api, name, 0, 5)
    result = api.ok("transform", {"name": name, "sql": "SELECT i * 10 AS x FROM events",
                                  "dry_run": True})
    assert result["rows"] == [{"x": 0}, {"x": 10}, {"x": 20}, {"x": 30}, {"x": 40}]
    assert result["output_schema"] == [{"name": "x", "type": "int64"}]
    got = api.ok("get", {"name": name})
    assert got["version"] == 1 and got["sql"] == "SELECT * FROM events"
    assert got["backlog_events"] == 5
    bad = api.call("transform", {"name": name, "sql": "SELECT nope FROM events", "dry_run": True})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "sql"


def test_logs_filter_by_level_and_time_and_carry_the_epoch(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("logged")
    _create(api, name, "SELECT CAST(s AS INTEGER) AS n FROM events",
            [{"name": "s", "type": "string"}])
    api.ndjson(name, [{"s": "not a number"}])
    api.ok("start", {"name": name})
    errors = wait_for(lambda: api.ok("logs", {"name": name, "level": "error"})["logs"],
                      message="an error log")
    assert errors[0]["epoch"] == 1 and "failed" in errors[0]["message"]
    every = api.ok("logs", {"name": name})["logs"]
    assert any(e["level"] == "info" for e in every) and len(every) > len(errors)
    since = every[-1]["timestamp"]
    later = api.ok("logs", {"name": name, "since": since})["logs"]
    assert later and all(e["timestamp"] >= since for e in later)
    newest = api.ok("logs", {"name": name, "limit": 1})["logs"]
    assert len(newest) == 1 and newest[0]["timestamp"] >= every[-1]["timestamp"]
    monitor = api.ok("monitor", {"name": name})
    assert monitor["errors"] >= 1 and "epoch 1" in monitor["last_error"]
    bad = api.call("logs", {"name": name, "level": "loud"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "level"
    api.ok("delete", {"name": name})
