"""Noisy neighbour: one pipeline's ingest + commit throughput alone, then beside a runaway SQL.

    python -m benchmarks.noisy_neighbour [--seconds 20] [--runaways 1] [--json out.json]

One server (``pipeline-do serve``, two epoch workers) with the SQL bounds of
issue #6: ``PIPELINE_DO_SQL_MEMORY_MB=512``, ``PIPELINE_DO_SQL_TIMEOUT_SECONDS=5``,
and enough attempts (``PIPELINE_DO_EPOCH_MAX_ATTEMPTS=1000``) that the runaway
pipeline keeps being retried for the whole measurement.

1. **Alone**: ``CLIENTS`` keep-alive clients post 1,000-event NDJSON batches to
   a fresh pipeline for ``--seconds``, then ``stop`` flushes it. Throughput =
   events committed / (first post until ``stop`` returned).
2. **Beside a runaway**: ``--runaways`` pipelines whose SQL is a cross join of
   the events with ``range(1e9)`` are started, then phase 1 is repeated on
   another fresh pipeline.

It prints both figures, their ratio, how often the runaway epochs were tried,
and the peak RSS of the server's processes. If that passes ``--max-rss-gb``
(an unbounded query), the server is killed and the run fails rather than the
machine. The issue asks that the neighbour keep its throughput "within
noise"; this measures it, the fault suite (``tests/integration/test_faults.py``)
only checks that the neighbour keeps committing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from typing import Any

from benchmarks.measure import PeakRss, wait_until_idle
from control_api.devserver import LiveServer

__all__ = ["RUNAWAY_SQL", "main", "measure_throughput", "run_noisy_neighbour"]

CLIENTS = 2
BATCH_EVENTS = 1000
RUNAWAY_SQL = "SELECT e.id, e.payload, r.range AS n FROM events e, range(1000000000) r"
SCHEMA = [{"name": "id", "type": "int64", "required": True}, {"name": "payload", "type": "string"}]
ROLL = {"roll": {"interval_seconds": 1.0}}


class RssExceeded(RuntimeError):
    """A process tree grew past the ceiling: the SQL memory bound did not hold."""


def _batch(first: int) -> bytes:
    return b"".join(b'{"id":%d,"payload":"%s"}\n' % (i, b"p" * 60)
                    for i in range(first, first + BATCH_EVENTS))


def measure_throughput(server: LiveServer, name: str, seconds: float, rss: PeakRss,
                       max_rss: int) -> dict[str, Any]:
    """Post to a fresh pipeline for ``seconds``, stop it; events committed per second."""
    server.ok("create", {"name": name, "schema": SCHEMA, "sql": "SELECT id, payload FROM events",
                         "sink": ROLL})
    server.ok("start", {"name": name})
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/x-ndjson"}
    acked = [0] * CLIENTS
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + seconds

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        first = k * 10**9
        try:
            while time.perf_counter() < deadline and not errors:
                if rss.peak_bytes > max_rss:
                    errors.append(f"peak RSS {rss.peak_bytes / 2**30:.1f} GB")
                    return
                connection.request("POST", f"/pipelines/{name}/events", body=_batch(first),
                                   headers=headers)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    errors.append(f"{response.status} {body[:200]!r}")
                    return
                acked[k] += BATCH_EVENTS
                first += BATCH_EVENTS
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        server.kill()
        raise RssExceeded(errors[0]) if errors[0].startswith("peak RSS") else RuntimeError(errors[0])
    stopped = server.ok("stop", {"name": name}, options={"timeout": 300_000}, timeout=400)
    elapsed = time.perf_counter() - started
    committed = server.ok("get", {"name": name})["events_out"]
    assert stopped["status"] == "stopped" and committed == sum(acked), (committed, sum(acked))
    return {"events": committed, "seconds": round(elapsed, 2), "eps": round(committed / elapsed)}


def run_noisy_neighbour(seconds: float = 20.0, runaways: int = 1,
                        max_rss_gb: float = 6.0) -> dict[str, Any]:
    max_rss = int(max_rss_gb * 2**30)
    with tempfile.TemporaryDirectory(prefix="noisy-") as data_dir:
        server = LiveServer(data_dir, args=("--job-workers", "2"), extra_env={
            "PIPELINE_DO_SQL_MEMORY_MB": "512", "PIPELINE_DO_SQL_TIMEOUT_SECONDS": "5",
            "PIPELINE_DO_EPOCH_MAX_ATTEMPTS": "1000"}).start()
        assert server.process is not None
        try:
            wait_until_idle(server.process.pid)
            with PeakRss(server.process.pid) as rss:
                alone = measure_throughput(server, "alone", seconds, rss, max_rss)
                wait_until_idle(server.process.pid)
                names = [f"runaway_{k}" for k in range(runaways)]
                for name in names:
                    server.ok("create", {"name": name, "schema": SCHEMA, "sql": RUNAWAY_SQL,
                                         "sink": ROLL})
                    server.post_ndjson(name, _batch(0))
                    server.ok("start", {"name": name})
                beside = measure_throughput(server, "beside", seconds, rss, max_rss)
                attempts = sum(server.ok("get", {"name": name})["errors"] for name in names)
                statuses = sorted({server.ok("get", {"name": name})["status"] for name in names})
        finally:
            server.kill()
    return {"alone": alone, "beside_runaway": beside, "runaways": runaways,
            "runaway_failed_attempts": attempts, "runaway_statuses": statuses,
            "ratio": round(beside["eps"] / alone["eps"], 3), "peak_rss_mb": round(rss.peak_mb)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="ingest time per phase")
    parser.add_argument("--runaways", type=int, default=1, help="runaway pipelines in phase 2")
    parser.add_argument("--max-rss-gb", type=float, default=6.0,
                        help="kill the server when its processes pass this (default 6)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        result = run_noisy_neighbour(args.seconds, args.runaways, args.max_rss_gb)
    except RssExceeded as err:
        print(f"the runaway SQL was not bounded: {err}; server killed", file=sys.stderr)
        return 1
    print(f"alone:          {result['alone']['eps']:>9,} events/s committed "
          f"({result['alone']['events']:,} events in {result['alone']['seconds']} s)")
    print(f"beside runaway: {result['beside_runaway']['eps']:>9,} events/s committed "
          f"({result['beside_runaway']['events']:,} events in {result['beside_runaway']['seconds']} s)")
    print(f"ratio {result['ratio']}; {result['runaways']} runaway pipeline(s), "
          f"{result['runaway_failed_attempts']} failed attempts, status {result['runaway_statuses']}; "
          f"peak RSS {result['peak_rss_mb']} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
