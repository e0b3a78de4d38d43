"""Faults on the real server: killed workers, runaway SQL, a poisoned epoch.

- Epoch workers are killed with SIGKILL during epochs, repeatedly, while three
  pipelines ingest: every pipeline keeps committing, and after ``stop`` every
  acknowledged event is in the files exactly once.
- A runaway SQL (a cross join with ``range(1e9)``, a recursive CTE that never
  ends) in one pipeline while another ingests: the other keeps committing, the
  runaway one ends ``failed`` with a clean ``last_error`` after
  ``PIPELINE_DO_EPOCH_MAX_ATTEMPTS`` attempts, and resumes after a ``transform``.
  As a ``transform`` dry run, a query that spends memory or time is a clean error.
  A watchdog kills the server if any of its processes passes ``RSS_CEILING``,
  so an unbounded query fails the test instead of the machine.
- A poisoned epoch (SQL that errors on one value) reaches ``failed``, a
  ``pipeline.failed`` webhook reaches a real receiver, and ``transform`` +
  ``resume`` deliver every accepted event once.

Throughput beside a runaway pipeline is measured by ``benchmarks/noisy_neighbour.py``,
not asserted here. Outcomes go to ``tests/artifacts/faults.json``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests

from tests.conftest import ADMIN_KEY
from tests.control_api.conftest import WEBHOOK_ENV, Receiver
from tests.integration.lake import lake_files, read_lake, send, sink_dir
from tests.integration.outcomes import OutcomeLog
from tests.live import LiveServer, planned_epoch, wait_for

SCHEMA = [{"name": "id", "type": "int64", "required": True}, {"name": "payload", "type": "string"},
          {"name": "country", "type": "string"}]
FAST_ROLL = {"roll": {"interval_seconds": 0.3, "max_events": 20_000}}
KILLS = 5
MAX_ATTEMPTS = 2
RSS_CEILING = 3 * 1024**3  # per process; the SQL memory bound is 512 MB
SEED = 6

pytestmark = pytest.mark.slow


# -- servers, clients, read-back --------------------------------------------------------


def _start(tmp_path_factory: Any, name: str, env: dict[str, str]) -> LiveServer:
    data_dir = tmp_path_factory.mktemp(name)
    return LiveServer(str(data_dir), api_key=ADMIN_KEY, args=("--job-workers", "2"),
                      extra_env=env).start()


@pytest.fixture(scope="module")
def kill_server(tmp_path_factory: Any) -> Iterator[LiveServer]:
    # Kills fail the epochs in flight: enough attempts that none of them ends failed.
    server = _start(tmp_path_factory, "kills", {"PIPELINE_DO_EPOCH_MAX_ATTEMPTS": "50"})
    yield server
    server.kill()


class RssWatchdog:
    """Samples every process of the server; kills the server when one passes the ceiling."""

    def __init__(self, server: LiveServer, ceiling: int) -> None:
        self.server, self.ceiling = server, ceiling
        self.peak = 0
        self.killed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self.server.process is not None
        root = psutil.Process(self.server.process.pid)
        while not self._stop.wait(0.05):
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peak = max(self.peak, rss)
                if rss > self.ceiling:
                    self.killed = f"{' '.join(process.cmdline())[:120]} at {rss / 1024**3:.1f} GB"
                    self.server.kill()
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def _sql_servers(tmp_path_factory: Any) -> Iterator[list[tuple[LiveServer, RssWatchdog]]]:
    started: list[tuple[LiveServer, RssWatchdog]] = []
    yield started
    for server, watchdog in started:
        watchdog.close()
        server.kill()


@pytest.fixture
def sql_server(tmp_path_factory: Any, _sql_servers: list[tuple[LiveServer, RssWatchdog]],
               ) -> tuple[LiveServer, RssWatchdog]:
    """The module's server with SQL bounds; a fresh one if the watchdog had to kill it."""
    if _sql_servers and _sql_servers[-1][1].killed is None:
        return _sql_servers[-1]
    server = _start(tmp_path_factory, "sql", {
        **WEBHOOK_ENV, "PIPELINE_DO_EPOCH_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "PIPELINE_DO_SQL_MEMORY_MB": "512", "PIPELINE_DO_SQL_TIMEOUT_SECONDS": "5",
        "PIPELINE_DO_DRY_RUN_TIMEOUT_SECONDS": "5"})
    _sql_servers.append((server, RssWatchdog(server, RSS_CEILING)))
    return _sql_servers[-1]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Client(threading.Thread):
    """Posts batches of fresh ids to one pipeline until stopped; remembers what was acknowledged."""

    def __init__(self, server: LiveServer, name: str, first_id: int, batch: int = 200) -> None:
        super().__init__(daemon=True)
        self.server, self.name, self.next_id, self.batch = server, name, first_id, batch
        self.acked: list[int] = []
        self.sent: list[int] = []
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set() and len(self.failures) < 20:
            ids = list(range(self.next_id, self.next_id + self.batch))
            self.next_id += self.batch
            self.sent += ids
            body = b"".join(b'{"id":%d,"payload":"%s","country":"42"}\n' % (i, b"p" * 40) for i in ids)
            status, reply = send(self.server, f"/pipelines/{self.name}/events", body, timeout=60)
            if status == 200 and reply["data"]["accepted"] == len(ids):
                self.acked += ids
            else:
                self.failures.append(f"{status} {json.dumps(reply)[:200]}")
            self._halt.wait(0.1)  # steady traffic, not a load test: epochs stay small

    def finish(self) -> None:
        self._halt.set()
        self.join(90)


def _create(server: LiveServer, name: str, **definition: Any) -> dict[str, Any]:
    created: dict[str, Any] = server.ok("create", {"name": name, "schema": SCHEMA,
                                                   "sink": dict(FAST_ROLL), **definition})
    return created


def _epochs(server: LiveServer, name: str) -> int:
    return int(server.ok("get", {"name": name})["epochs"])


def _total_epochs(server: LiveServer, names: list[str]) -> int:
    return sum(_epochs(server, name) for name in names)


def _read_ids(sink: str) -> tuple[Counter[int], dict[str, str]]:
    rows, unreadable = read_lake(lake_files(sink), "id")
    return Counter(row[0] for row in rows), unreadable


def _assert_clean_error(message: str | None, server: LiveServer) -> None:
    """A short message for users: no traceback, no server path, no exception chain."""
    assert message, "no last_error"
    assert len(message) < 600, message
    for leak in ("Traceback", server.data_dir, "/site-packages/", "During handling", 'File "'):
        assert leak not in message, message


# -- (a) epoch workers killed during epochs -----------------------------------------------


def _epoch_workers(server: LiveServer) -> list[psutil.Process]:
    assert server.process is not None
    children = psutil.Process(server.process.pid).children(recursive=True)
    workers = []
    for child in children:
        try:
            if "multiprocessing.spawn" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:
            continue
    return workers


def _kill_a_worker_during_an_epoch(server: LiveServer, names: list[str], rng: random.Random) -> bool:
    """SIGKILL one epoch worker while an epoch is planned, then wait for a commit."""
    wait_for(lambda: planned_epoch(server.data_dir) and _epoch_workers(server),
             timeout=180, interval=0.05, message="an epoch running on a worker")
    committed = _total_epochs(server, names)
    try:
        os.kill(rng.choice(_epoch_workers(server)).pid, signal.SIGKILL)
    except (ProcessLookupError, IndexError):
        return False
    wait_for(lambda: _total_epochs(server, names) > committed, timeout=180, interval=0.2,
             message="a commit after the kill")
    return True


def test_epoch_workers_killed_during_epochs_lose_and_duplicate_nothing(
        kill_server: LiveServer, outcomes: OutcomeLog) -> None:
    server = kill_server
    names = [f"ingesting_{k}" for k in range(3)]
    sinks = [sink_dir(_create(server, name)["sink"]["uri"]) for name in names]
    for name in names:
        server.ok("start", {"name": name})
    clients = [Client(server, name, first_id=(k + 1) * 10**9) for k, name in enumerate(names)]
    for client in clients:
        client.start()
    rng = random.Random(SEED)
    try:
        kills = sum(_kill_a_worker_during_an_epoch(server, names, rng) for _ in range(KILLS))
        after_kills = {name: _epochs(server, name) for name in names}
        wait_for(lambda: all(_epochs(server, n) > after_kills[n] for n in names), timeout=180,
                 interval=0.2, message="every pipeline committing after the kills")
        assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    finally:
        for client in clients:
            client.finish()

    for name in names:
        assert server.ok("stop", {"name": name}, options={"timeout": 120_000})["status"] == "stopped"
    delivered: Counter[int] = Counter()
    unreadable: dict[str, str] = {}
    for sink in sinks:
        ids, bad_files = _read_ids(sink)
        delivered.update(ids)
        unreadable.update(bad_files)
    acked = [i for c in clients for i in c.acked]
    sent = {i for c in clients for i in c.sent}
    row = outcomes.record(f"epoch worker SIGKILLed {kills} times during epochs, 3 pipelines ingesting",
                          "every pipeline keeps committing; each acknowledged event once",
                          f"{kills} kills, {sum(after_kills.values())} epochs committed by then")
    row.count(acked, delivered)
    assert [f for c in clients for f in c.failures] == []
    assert unreadable == {}
    assert (row.lost, row.duplicated) == (0, 0)
    assert set(delivered) <= sent  # nothing from nowhere


# -- (c) a poisoned epoch: failed, announced, fixed, resumed -------------------------------


def test_a_poisoned_epoch_fails_is_announced_and_resumes_after_a_fix(
        sql_server: tuple[LiveServer, RssWatchdog], receiver: Receiver,
        outcomes: OutcomeLog) -> None:
    server, _watchdog = sql_server
    hook = requests.post(server.url + "/webhooks", timeout=30,
                         headers={"Authorization": f"Bearer {server.api_key}"},
                         json={"url": receiver.url, "events": ["pipeline.failed"]})
    assert hook.status_code == 200, hook.text
    created = _create(server, "poisoned", sql="SELECT id, CAST(country AS INTEGER) AS code FROM events")
    countries = ["42"] * 20
    countries[7] = "DE"  # CAST('DE' AS INTEGER) fails the whole epoch
    acked = list(range(1, 21))
    status, reply = send(server, "/pipelines/poisoned/events", b"".join(
        b'{"id":%d,"country":"%s"}\n' % (i, c.encode()) for i, c in zip(acked, countries)))
    assert status == 200 and reply["data"]["accepted"] == 20, reply
    server.ok("start", {"name": "poisoned"})
    try:
        info = wait_for(lambda: (i := server.ok("get", {"name": "poisoned"}))["status"] == "failed"
                        and i, timeout=180, interval=0.25, message="status failed")
        announced = wait_for(lambda: [e for e in receiver.events(created["id"])
                                      if e["type"] == "pipeline.failed"],
                             timeout=30, message="a pipeline.failed webhook")
        observed = f"failed after {info['errors']} attempts; pipeline.failed delivered"
    except AssertionError as err:
        observed = f"never failed: {err}"
        raise
    finally:
        outcomes.record("poisoned epoch (CAST of a bad value)",
                        f"failed after {MAX_ATTEMPTS} attempts, pipeline.failed, resumes after a fix",
                        observed)
    _assert_clean_error(info["last_error"], server)
    assert announced[0]["data"]["id"] == created["id"]

    # Ingest goes on while failed; the fix and resume deliver everything once.
    more = list(range(21, 31))
    status, reply = send(server, "/pipelines/poisoned/events",
                         b"".join(b'{"id":%d,"country":"7"}\n' % i for i in more))
    assert status == 200 and reply["data"]["accepted"] == 10, reply
    server.ok("transform", {"name": "poisoned",
                            "sql": "SELECT id, TRY_CAST(country AS INTEGER) AS code FROM events"})
    assert server.ok("resume", {"name": "poisoned"})["status"] == "running"
    assert server.ok("stop", {"name": "poisoned"}, options={"timeout": 60_000})["status"] == "stopped"
    rows, unreadable = read_lake(lake_files(sink_dir(created["sink"]["uri"])), "id, code")
    delivered = Counter(row[0] for row in rows)
    outcomes.record("poisoned epoch (CAST of a bad value)", "", observed + "; resumed after transform"
                    ).count(acked + more, delivered)
    assert unreadable == {}
    assert delivered == Counter(acked + more)
    codes = {row[0]: row[1] for row in rows}
    assert codes[8] is None and codes[1] == 42 and codes[25] == 7  # the new SQL ran


# -- (b) a runaway SQL beside a pipeline that keeps committing ---------------------------


RUNAWAY_SQL = {
    "cross join with range(1e9)": "SELECT e.id, e.payload, r.range AS n FROM events e, range(1000000000) r",
    "recursive CTE that never ends": "WITH RECURSIVE r(id, n) AS (SELECT id, 1 FROM events "
                                     "UNION ALL SELECT id, n + 1 FROM r) "
                                     "SELECT e.id, e.payload, r.n FROM events e JOIN r USING (id)",
}


@pytest.mark.parametrize("runaway", sorted(RUNAWAY_SQL))
def test_a_runaway_sql_fails_its_own_pipeline_while_the_neighbour_commits(
        sql_server: tuple[LiveServer, RssWatchdog], outcomes: OutcomeLog, runaway: str) -> None:
    server, watchdog = sql_server
    tag = str(sorted(RUNAWAY_SQL).index(runaway))
    neighbour, name = f"neighbour_{tag}", f"runaway_{tag}"
    neighbour_sink = sink_dir(_create(server, neighbour)["sink"]["uri"])
    server.ok("start", {"name": neighbour})
    runaway_sink = sink_dir(_create(server, name, sql=RUNAWAY_SQL[runaway])["sink"]["uri"])
    runaway_ids = list(range(1, 1001))
    status, reply = send(server, f"/pipelines/{name}/events", b"".join(
        b'{"id":%d,"payload":"x","country":"42"}\n' % i for i in runaway_ids))
    assert status == 200 and reply["data"]["accepted"] == len(runaway_ids), reply
    client = Client(server, neighbour, first_id=(int(tag) + 1) * 10**9)
    client.start()
    try:
        wait_for(lambda: _epochs(server, neighbour) >= 1, timeout=180, message="a first commit")
        server.ok("start", {"name": name})
        before = _epochs(server, neighbour)
        info = wait_for(lambda: (i := server.ok("get", {"name": name}))["status"] == "failed" and i,
                        timeout=90, interval=0.25, message=f"{name} failed")
        during = _epochs(server, neighbour)
        wait_for(lambda: _epochs(server, neighbour) > during, timeout=180,
                 message="the neighbour committing after the failure")
        assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    finally:
        observed = (f"peak RSS {watchdog.peak / 1024**2:.0f} MB"
                    + (f"; watchdog killed {watchdog.killed}" if watchdog.killed else ""))
        outcomes.record(f"runaway SQL ({runaway}) beside an ingesting pipeline",
                        f"runaway pipeline failed after {MAX_ATTEMPTS} attempts, clean last_error; "
                        "neighbour keeps committing", observed)
        client.finish()
    _assert_clean_error(info["last_error"], server)
    assert during > before, "the neighbour committed nothing while the runaway ran"
    assert info["errors"] >= MAX_ATTEMPTS

    # The fix: a bounded SQL, then resume; every runaway event arrives once.
    server.ok("transform", {"name": name, "sql": "SELECT id, payload FROM events"})
    assert server.ok("resume", {"name": name})["status"] == "running"
    for pipeline in (neighbour, name):
        assert server.ok("stop", {"name": pipeline}, options={"timeout": 90_000})["status"] == "stopped"
    neighbour_ids, unreadable = _read_ids(neighbour_sink)
    fixed_ids, unreadable_fixed = _read_ids(runaway_sink)
    outcomes.record(f"runaway SQL ({runaway}) beside an ingesting pipeline", "",
                    f"{observed}; neighbour epochs {before} -> {during} while the runaway ran"
                    ).count(client.acked + runaway_ids, neighbour_ids + fixed_ids)
    assert client.failures == []
    assert {**unreadable, **unreadable_fixed} == {}
    assert Counter(client.acked) == neighbour_ids
    assert Counter(runaway_ids) == fixed_ids
    assert watchdog.killed is None and watchdog.peak < RSS_CEILING


# A dry run returns at most ``limit`` rows, so a plain cross join ends early there:
# these cannot, one spends memory, the other time.
RUNAWAY_DRY_RUNS = {
    "memory: list() over a cross join": "SELECT e.id, list(r.range) AS big "
                                        "FROM events e, range(100000000) r GROUP BY e.id",
    "time: count(*) over a filtered cross join": "SELECT count(*) AS n FROM events e, range(1000000000) r "
                                                 "WHERE (r.range + e.id) % 7 = 3",
}


@pytest.mark.parametrize("runaway", sorted(RUNAWAY_DRY_RUNS))
def test_a_runaway_dry_run_is_a_clean_error_and_the_api_stays_up(
        sql_server: tuple[LiveServer, RssWatchdog], outcomes: OutcomeLog, runaway: str) -> None:
    server, watchdog = sql_server
    name = "dry_" + str(sorted(RUNAWAY_DRY_RUNS).index(runaway))
    _create(server, name)
    status, reply = send(server, f"/pipelines/{name}/events", b"".join(
        b'{"id":%d,"payload":"x","country":"42"}\n' % i for i in range(1000)))
    assert status == 200, reply
    try:
        response = server.call("transform", {"name": name, "dry_run": True,
                                             "sql": RUNAWAY_DRY_RUNS[runaway]}, timeout=60)
        observed = f"{response.status_code} {response.json().get('error', {}).get('code')}"
    except requests.RequestException as err:
        response, observed = None, f"no answer ({type(err).__name__})"
    observed += f"; peak RSS {watchdog.peak / 1024**2:.0f} MB"
    outcomes.record(f"runaway SQL as a transform dry run ({runaway})",
                    "a clean 400/504 error, memory bounded",
                    observed + (f"; watchdog killed {watchdog.killed}" if watchdog.killed else ""))
    assert response is not None and response.status_code in (400, 504), observed
    error = response.json()["error"]
    assert error["code"] in ("VALIDATION_ERROR", "TIMEOUT"), error
    _assert_clean_error(error["message"], server)
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    assert server.ok("get", {"name": name})["version"] == 1  # a dry run changes nothing
    assert watchdog.killed is None and watchdog.peak < RSS_CEILING
