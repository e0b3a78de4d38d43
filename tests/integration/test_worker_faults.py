"""Epoch workers killed with SIGKILL mid-epoch, again and again, on the real server.

The kernel's OOM killer does this to the biggest process. Each kill must
cost only the epoch that worker ran (retried, committed once); the other
pipelines keep committing, the pool keeps its workers, ``/healthz`` stays
200, and after ``stop`` every acknowledged event is in the files exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

import psutil
import requests

from tests.live import LiveServer, busy_epoch_workers, kill_busy_epoch_workers, query, wait_for

SCHEMA = [{"name": "seq", "type": "int64", "required": True},
          {"name": "payload", "type": "string"}]
PIPELINES = ("kill-a", "kill-b", "kill-c")
KILLS = 5


def _events_out(server: LiveServer) -> dict[str, int]:
    return {name: server.ok("get", {"name": name})["events_out"] for name in PIPELINES}


def _healthy(server: LiveServer) -> bool:
    return requests.get(server.url + "/healthz", timeout=10).status_code == 200


class _Ingest:
    """A client per pipeline, posting numbered events until stopped."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.acked: dict[str, list[range]] = {name: [] for name in PIPELINES}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, args=(name, k * 10**9))
                         for k, name in enumerate(PIPELINES)]

    def __enter__(self) -> _Ingest:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _post(self, name: str, first: int) -> None:
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            lines = b"\n".join(json.dumps({"seq": i, "payload": "x" * 40}).encode()
                               for i in range(first, first + 2000))
            response = self.server.post_ndjson(name, lines)
            if response.status_code != 200 or response.json()["data"]["accepted"] != 2000:
                self.failures.append(f"{name}: {response.status_code} {response.text[:200]}")
                return
            self.acked[name].append(range(first, first + 2000))
            first += 2000
            self._stop.wait(0.05)


def test_killing_epoch_workers_again_and_again_stops_no_pipeline_and_loses_nothing(
        tmp_path: Any) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    server = LiveServer(str(data_dir), args=("--job-workers", "2")).start()
    try:
        for name in PIPELINES:
            server.ok("create", {"name": name, "schema": SCHEMA,
                                 "sink": {"roll": {"interval_seconds": 0.2}}})
            server.ok("start", {"name": name})
        with _Ingest(server) as ingest:
            for kill in range(KILLS):
                before = _events_out(server)
                wait_for(lambda: kill_busy_epoch_workers(server, at_most=1), timeout=120,
                         interval=0.02, message=f"a busy epoch worker, killed (kill {kill})")
                assert _healthy(server)
                wait_for(lambda before=before: all(  # type: ignore[misc]
                    now > before[name] for name, now in _events_out(server).items()),
                    timeout=180, interval=0.2, message=f"every pipeline to commit after kill {kill}")
        assert ingest.failures == []
        assert _healthy(server)

        died = 0
        for name in PIPELINES:
            assert server.ok("stop", {"name": name}, options={"timeout": 120_000})["status"] \
                == "stopped"
            rows = query(f"SELECT seq FROM read_parquet('{data_dir}/lake/{name}/**/*.parquet')")
            written = Counter(r[0] for r in rows)
            acked = {seq for r in ingest.acked[name] for seq in r}
            assert set(written) == acked, f"{name}: {len(acked - set(written))} acked events lost"
            assert max(written.values()) == 1, f"{name}: an event was written twice"
            logs = server.ok("logs", {"name": name, "level": "error"})["logs"]
            died += sum("worker process died" in entry["message"] for entry in logs)
        assert died >= 1, "no kill hit a running epoch"  # the name said busy; one must have
        assert _healthy(server)
    finally:
        server.kill()


def test_healthz_answers_503_while_the_job_manager_process_is_frozen(live_server: Any) -> None:
    """The API's workers outlive a frozen (or dead) ``serve`` process; /healthz must
    not answer ok for a server that writes nothing."""
    server = live_server
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # the manager's process only, not gunicorn
    try:
        body = wait_for(lambda: _unhealthy(server), timeout=120, interval=1.0,
                        message="/healthz to notice the silent manager")
        assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert "has not reported for" in body["error"]["message"]
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    wait_for(lambda: _healthy(server), timeout=60, message="/healthz to recover")


def _unhealthy(server: LiveServer) -> dict[str, Any] | None:
    response = requests.get(server.url + "/healthz", timeout=10)
    return response.json() if response.status_code == 503 else None


# Hours of CPU per event once there are events (see tests/beam_pipelines/runners/local/test_scheduler.py).
_ENDLESS_SQL = ("SELECT e.seq, (SELECT count(*) FROM range(e.seq * 0 + 1000000000000) r(i) "
                "WHERE hash(i) = 0) AS c FROM events e")


def _gone(worker: psutil.Process) -> bool:
    try:
        return worker.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _attempts(data_dir: Any) -> int:
    con = sqlite3.connect(os.path.join(data_dir, "pipeline-do.sqlite"), timeout=10)
    try:
        return int(con.execute("SELECT coalesce(max(attempts), 0) FROM epochs").fetchone()[0])
    finally:
        con.close()


# CPU seconds past an epoch's first step after which its worker is in its SQL (a
# whole small first epoch costs a fresh worker ~0.3 s: test_scheduler.py).
_IN_SQL_CPU_SECONDS = 2.0


def _in_its_sql(server: LiveServer, counted_at: dict[int, float]) -> psutil.Process | None:
    """The busy worker once its epoch runs its SQL. Busy is not enough: a delete
    that comes before the epoch read its row or buffer ends it with nothing to cancel."""
    busy = busy_epoch_workers(server)
    if not busy or _attempts(server.data_dir) < 1:
        return None
    try:
        cpu = sum(busy[0].cpu_times()[:2])
    except psutil.Error:
        return None
    return busy[0] if cpu - counted_at.setdefault(busy[0].pid, cpu) >= _IN_SQL_CPU_SECONDS \
        else None


def test_delete_stops_the_running_epoch_and_frees_its_worker(tmp_path: Any) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    server = LiveServer(str(data_dir), args=("--job-workers", "1")).start()
    try:
        server.ok("create", {"name": "endless", "schema": SCHEMA, "sql": _ENDLESS_SQL,
                             "sink": {"roll": {"interval_seconds": 0.1}}})
        server.ok("create", {"name": "other", "schema": SCHEMA,
                             "sink": {"roll": {"interval_seconds": 0.1}}})
        for name in ("endless", "other"):
            server.ok("start", {"name": name})
        assert server.post_ndjson("endless", b'{"seq": 1}').status_code == 200
        counted_at: dict[int, float] = {}
        busy = wait_for(lambda: _in_its_sql(server, counted_at), timeout=180,
                        message="the endless epoch in its SQL")

        assert server.ok("delete", {"name": "endless"}) == {"deleted": True}
        wait_for(lambda: _gone(busy), timeout=60, message="the deleted pipeline's worker killed")
        lines = b"\n".join(b'{"seq": %d}' % i for i in range(100))
        assert server.post_ndjson("other", lines).status_code == 200
        # One worker: the other pipeline commits only on the worker that replaced it.
        wait_for(lambda: server.ok("get", {"name": "other"})["events_out"] == 100,
                 timeout=120, message="the other pipeline's commit")
        assert not (data_dir / "lake" / "endless").exists()
        assert _healthy(server)
    finally:
        server.kill()
