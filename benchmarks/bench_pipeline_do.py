"""Contender: pipeline.do itself, end to end over HTTP.

The server is started as ``pipeline-do serve`` starts it (gunicorn workers,
the job manager and its epoch workers, all in one process group), with the
same SQL as the other contenders and a local Parquet (zstd) sink partitioned
by event day. Each phase starts once the server's processes are idle (its
epoch workers import Beam after /healthz already answers). Two phases:

1. **Throughput**: ``CLIENTS`` concurrent HTTP clients post every 1,000-event
   NDJSON batch to the fast ingest path; the clock runs from the first
   request until ``stop`` returns, i.e. until the last event is committed in
   Parquet. ``eps`` = events / that time.
2. **Latency at half load**: a second pipeline receives batches paced at
   half the measured rate; the client records each ack's latency (p50, p99)
   and the server's monitor reports ack → commit latency (visibility p95).

``run_pipeline_do(dataset_path, batches, workdir) -> dict`` is what
``benchmarks.run`` calls; the throughput phase's output directory is
checked by the harness against the expected rows.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import PeakRss, cpu_by_role, percentile, wait_until_idle
from benchmarks.workload import AMOUNT_THRESHOLD, GROSS_FACTOR
from control_api.devserver import LiveServer

__all__ = ["CLIENTS", "ROLL_INTERVAL_SECONDS", "run_pipeline_do"]

CLIENTS = 4
ROLL_INTERVAL_SECONDS = 2.0
LATENCY_PHASE_SECONDS = 20.0

SCHEMA = [
    {"name": "user_id", "type": "int64", "required": True},
    {"name": "country", "type": "string"},
    {"name": "event", "type": "string"},
    {"name": "amount", "type": "float64"},
    {"name": "ts", "type": "timestamp", "required": True},
    {"name": "session", "type": "string"},
]
# The workload's SQL over pipeline.do's typed ``events`` (``ts`` is parsed at
# ingest); ``dt`` comes from the partition path, filled from ``_event_time``.
SQL = f"""
SELECT user_id, country, upper(country) AS country_uc, event, amount,
       amount * {GROSS_FACTOR} AS amount_gross, CAST(ts AS TIMESTAMP) AS ts, session, _event_time
FROM events
WHERE amount > {AMOUNT_THRESHOLD}
""".strip()


def _create(server: LiveServer, name: str) -> None:
    server.ok("create", {"name": name, "schema": SCHEMA, "event_time_field": "ts", "sql": SQL,
                         "sink": {"partition_by": "dt=%Y-%m-%d",
                                  "roll": {"interval_seconds": ROLL_INTERVAL_SECONDS}}})
    server.ok("start", {"name": name})


def _post_all(server: LiveServer, name: str, batches: list[bytes], clients: int,
              interval: float | None = None) -> list[float]:
    """Post batches from ``clients`` threads; return each ack's latency in seconds.

    Each client is one keep-alive ``http.client`` connection: a load
    generator shares the server's cores here, and ``requests`` spends ~2 ms
    of CPU per 140 kB post where ``http.client`` spends ~0.7 ms.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/x-ndjson"}
    path = f"/pipelines/{name}/events"
    start = time.perf_counter()

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            for i in range(k, len(batches), clients):
                if interval is not None:  # paced: batch i leaves at start + i * interval
                    delay = start + i * interval - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                sent = time.perf_counter()
                connection.request("POST", path, body=batches[i], headers=headers)
                response = connection.getresponse()
                body = response.read()
                elapsed = time.perf_counter() - sent
                if response.status != 200:
                    raise RuntimeError(f"ingest failed: {response.status} {body[:200]!r}")
                with lock:
                    latencies.append(elapsed)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def run_pipeline_do(dataset_path: str | Path, batches: list[bytes],
                    workdir: str | Path) -> dict[str, Any] | None:
    data_dir = Path(workdir) / "server"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = LiveServer(str(data_dir)).start()
    assert server.process is not None
    # serve answers /healthz while its epoch workers still import Beam (2-3 s
    # of CPU each, on both cores): the clock starts after that.
    settled = wait_until_idle(server.process.pid)
    events = sum(b.count(b"\n") + (0 if b.endswith(b"\n") else 1) for b in batches)
    try:
        with PeakRss(server.process.pid) as rss:
            _create(server, "bench")
            cpu_before, client_before = cpu_by_role(server.process.pid), _own_cpu_seconds()
            started = time.perf_counter()
            _post_all(server, "bench", batches, CLIENTS)
            ingested = time.perf_counter()
            server.ok("stop", {"name": "bench"}, options={"timeout": 600_000}, timeout=700)
            seconds = time.perf_counter() - started
            eps = events / seconds
            cpu = {role: used - cpu_before[role]
                   for role, used in cpu_by_role(server.process.pid).items()}
            cpu["client"] = _own_cpu_seconds() - client_before

            # Half of the sustained rate, for long enough to see several epochs,
            # once the first phase's clean-up (dropping 1M events from its
            # buffer) is done: this phase measures the steady state.
            wait_until_idle(server.process.pid)
            _create(server, "latency")
            interval = len(batches[0].splitlines()) / (eps / 2)
            count = min(len(batches), max(10, int(LATENCY_PHASE_SECONDS / interval)))
            acks = _post_all(server, "latency", batches[:count], CLIENTS, interval=interval)
            server.ok("stop", {"name": "latency"}, options={"timeout": 600_000}, timeout=700)
            monitor = server.ok("monitor", {"name": "latency", "window_seconds": 3600})
        visibility = monitor["latency_ms"]["p95"]
        return {
            "eps": eps,
            "events": events,
            "seconds": seconds,
            "ingest_seconds": ingested - started,
            "output_dir": str(data_dir / "lake" / "bench"),
            "ack_p50_ms": _ms(percentile(acks, 50)),
            "ack_p99_ms": _ms(percentile(acks, 99)),
            "latency_phase_eps": (count * len(batches[0].splitlines())) / (count * interval),
            "visibility_p95_s": None if visibility is None else visibility / 1000.0,
            "roll_interval_s": ROLL_INTERVAL_SECONDS,
            "clients": CLIENTS,
            "server_settled_s": settled,
            "peak_rss_mb": rss.peak_mb,
            "peak_rss_by_role_mb": rss.peak_by_role_mb,
            # Where the throughput phase's CPU went, per event, and how many of
            # the cores it kept busy: the profile a faster data path starts from.
            "cpu_us_per_event": {role: round(used / events * 1e6, 2)
                                 for role, used in cpu.items()},
            "cores_busy": round(sum(cpu.values()) / seconds, 2),
        }
    finally:
        server.kill()


def _own_cpu_seconds() -> float:
    """This process's CPU time: the HTTP clients (and the RSS sampler)."""
    times = os.times()
    return times.user + times.system


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)
