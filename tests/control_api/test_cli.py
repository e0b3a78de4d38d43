"""The ``pipeline-do`` client commands drive a real server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.conftest import ADMIN_KEY
from tests.control_api.conftest import Api, read_rows


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "control_api.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_create_start_ingest_monitor_stop_cycle(api: Api, tmp_path: Any,
                                                unique: Callable[[str], str]) -> None:
    name = unique("cli")
    env = {"PIPELINE_DO_URL": api.url, "PIPELINE_DO_API_KEY": ADMIN_KEY}
    definition = tmp_path / "definition.json"
    definition.write_text(json.dumps({
        "name": name, "schema": [{"name": "i", "type": "int64", "required": True}],
        "sql": "SELECT i, i * 2 AS doubled FROM events",
        "sink": {"roll": {"interval_seconds": 0.5}}}))
    events = tmp_path / "events.ndjson"
    with events.open("w") as f:
        for i in range(2500):
            f.write(json.dumps({"i": i}) + "\n")
            if i == 7:
                f.write("\n")  # blank lines are skipped
        f.write('{"i": "not a number"}\n')

    created = _cli("create", "-f", str(definition), env=env)
    assert created.returncode == 0, created.stderr
    sink = json.loads(created.stdout)["sink"]["uri"]
    # --url and --api-key work as well as the environment
    started = _cli("start", name, "--url", api.url, "--api-key", ADMIN_KEY)
    assert started.returncode == 0 and json.loads(started.stdout)["status"] == "running"

    ingested = _cli("ingest", name, str(events), "--batch-events", "1000", env=env)
    assert ingested.returncode == 0, ingested.stderr
    result = json.loads(ingested.stdout)
    assert result["accepted"] == 2500
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [(2500, "type_mismatch")]
    assert f"ingest {name}" in ingested.stderr and "100%" in ingested.stderr  # the progress bar

    monitor = _cli("monitor", name, env=env)
    assert monitor.returncode == 0
    counters = json.loads(monitor.stdout)
    assert counters["events_in"] == 2500 and counters["events_rejected"] == 1

    stopped = _cli("stop", name, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "stopped"
    rows = read_rows(sink, "i, doubled")
    assert sorted(rows) == [(i, 2 * i) for i in range(2500)]

    final = json.loads(_cli("get", name, env=env).stdout)
    assert final["events_out"] == 2500 and final["backlog_events"] == 0
    logs = _cli("logs", name, "--level", "info", env=env)
    assert logs.returncode == 0 and "committed" in logs.stdout and "epoch=" in logs.stdout

    follow = subprocess.Popen([sys.executable, "-m", "control_api.cli", "logs", name, "--follow"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline() for _ in range(2)]
        assert all(line.strip() for line in seen)
    finally:
        follow.terminate()
        follow.wait(timeout=30)

    listed = json.loads(_cli("list", env=env).stdout)
    assert name in [p["name"] for p in listed]


def test_errors_print_the_code_and_exit_1(api: Api) -> None:
    env = {"PIPELINE_DO_URL": api.url, "PIPELINE_DO_API_KEY": ADMIN_KEY}
    missing = _cli("get", "no_such_pipeline", env=env)
    assert missing.returncode == 1 and "error: NOT_FOUND" in missing.stderr
    unauthorized = _cli("list", "--url", api.url, "--api-key", "wrong")
    assert unauthorized.returncode == 1 and "AUTHENTICATION_ERROR" in unauthorized.stderr


def test_keys_create_prints_the_key_alone_on_its_last_line(api: Api) -> None:
    created = _cli("keys", "create", "--scope", "read", "--data-dir", api.server.data_dir)
    assert created.returncode == 0
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("pdo_") and " " not in key
    assert Api(api.server, key).call("list").status_code == 200
