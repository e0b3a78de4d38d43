"""Crash safety: ``kill -9`` mid-epoch and mid-ingest loses and duplicates nothing.

Every acknowledged event must be in the files exactly once after a restart
and ``stop``; events whose request got no answer may be there once or not
at all, never twice.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from typing import Any

import requests

from tests.live import LiveServer, kill_busy_epoch_workers, planned_epoch, query, wait_for

SCHEMA = [{"name": "seq", "type": "int64", "required": True},
          {"name": "payload", "type": "string"}]


def _batch(first: int, size: int) -> bytes:
    return b"\n".join(json.dumps({"seq": i, "payload": "x" * 40}).encode()
                      for i in range(first, first + size))


def _written(server: LiveServer, name: str) -> Counter[int]:
    rows = query(f"SELECT seq FROM read_parquet('{server.data_dir}/lake/{name}/**/*.parquet')")
    return Counter(r[0] for r in rows)


def test_kill_9_of_a_worker_during_an_epoch_reruns_it_exactly_once(live_server: Any) -> None:
    server = live_server
    server.ok("create", {"name": "crash", "schema": SCHEMA,
                         "sink": {"roll": {"interval_seconds": 0.2, "max_events": 50_000}}})
    acked = 0
    for first in range(0, 200_000, 10_000):
        response = server.post_ndjson("crash", _batch(first, 10_000))
        assert response.status_code == 200 and response.json()["data"]["accepted"] == 10_000
        acked += 10_000
    server.ok("start", {"name": "crash"})

    # A worker still starting, or done with its epoch, runs none: killing it fails
    # none (the pool just starts another). Kill the ones running an epoch.
    wait_for(lambda: kill_busy_epoch_workers(server), timeout=120, interval=0.01,
             message="an epoch worker running an epoch, killed")

    stopped = server.ok("stop", {"name": "crash"}, options={"timeout": 120_000})
    assert stopped["status"] == "stopped"
    written = _written(server, "crash")
    assert sum(written.values()) == acked
    assert set(written) == set(range(acked)) and max(written.values()) == 1
    logs = server.ok("logs", {"name": "crash", "level": "error"})["logs"]
    assert any("worker process died" in entry["message"] for entry in logs), logs


def test_kill_9_of_the_whole_server_during_ingest_loses_no_acknowledged_event(
        tmp_path: Any) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    server = LiveServer(str(data_dir)).start()
    try:
        server.ok("create", {"name": "ingest", "schema": SCHEMA,
                             "sink": {"roll": {"interval_seconds": 0.3}}})
        server.ok("start", {"name": "ingest"})
        acked: list[range] = []
        sent: list[range] = []
        stop = threading.Event()

        def client(worker: int) -> None:
            first = worker * 10_000_000
            while not stop.is_set():
                sent.append(range(first, first + 1000))
                try:
                    response = server.post_ndjson("ingest", _batch(first, 1000))
                except requests.RequestException:
                    return
                if response.status_code == 200:
                    assert response.json()["data"]["accepted"] == 1000
                    acked.append(range(first, first + 1000))
                first += 1000

        threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 60 and planned_epoch(server.data_dir), timeout=180,
                 interval=0.01, message="60 acknowledged requests and an epoch planned")
        server.kill(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(30)

        server = LiveServer(str(data_dir), port=server.port).start()
        assert server.ok("get", {"name": "ingest"})["status"] == "running"
        server.ok("stop", {"name": "ingest"}, options={"timeout": 120_000})
        written = _written(server, "ingest")
        assert max(written.values()) == 1, "an event was written twice"
        acked_ids = {i for r in acked for i in r}
        sent_ids = {i for r in sent for i in r}
        assert acked_ids <= set(written), f"{len(acked_ids - set(written))} acked events lost"
        assert set(written) <= sent_ids
    finally:
        server.kill()
