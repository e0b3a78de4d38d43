"""CPU per request of ``POST /pipelines/<ref>/events``: the lean path vs Flask's.

``python -m benchmarks.bench_ingest_path [--requests 100] [--events 1000] [--rounds 5]
[--without-key]``

One app, in process, no HTTP server: each request is a raw WSGI environ
(as gunicorn builds it) handed either to the app's entry, where
:class:`control_api.fastpath.EventsFastPath` serves the events route, or
straight to Flask's own ``wsgi_app`` (the dispatcher's fallback), where the
same route runs as a Flask view with every hook. The pipeline has the make
bench schema; the bodies are the make bench data set's NDJSON requests.
CPU time (``time.process_time``) is summed over ``--requests`` requests per
round; rounds alternate which path goes first, and every round's figure is
printed, because the machine is shared and noisy. The difference between
the two paths is the framework's cost; the rest (decode, buffer append) is
the same code on both. ``--without-key`` sends no key: every request is a
401 answered before the body is read, so what is measured is the dispatch
and the envelope alone.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline_do import SCHEMA, SQL
from benchmarks.dataset import ndjson_batches, write_ndjson

__all__ = ["main", "measure"]

_KEY = "pdo_bench_ingest_path_key_0123456789"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _environ(body: bytes, authorization: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/pipelines/bench/events", "SCRIPT_NAME": "",
            "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000", "HTTP_AUTHORIZATION": authorization,
            "CONTENT_TYPE": "application/x-ndjson", "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True,
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False}


def _post(app: WsgiApp, body: bytes, authorization: str) -> None:
    status: list[str] = []

    def start_response(line: str, _headers: Any, _exc: Any = None) -> None:
        status.append(line)

    reply = app(_environ(body, authorization), start_response)
    try:
        b"".join(reply)
    finally:
        getattr(reply, "close", lambda: None)()
    if not status[0].startswith("200" if authorization else "401"):
        raise RuntimeError(f"ingest answered {status[0]}")


def _cpu_seconds(app: WsgiApp, bodies: list[bytes], requests: int, authorization: str) -> float:
    started = time.process_time()
    for i in range(requests):
        _post(app, bodies[i % len(bodies)], authorization)
    return time.process_time() - started


def measure(requests: int, events: int, rounds: int, rate_limit: int,
            with_key: bool = True) -> dict[str, Any]:
    from control_api import create_app
    from control_api.fastpath import EventsFastPath

    with tempfile.TemporaryDirectory(prefix="bench-ingest-path-") as tmp:
        app = create_app({"DATA_DIR": str(Path(tmp) / "data"), "API_KEY": _KEY,
                          "RATE_LIMIT": rate_limit})
        client = app.test_client()
        reply = client.post("/pipeline", headers={"Authorization": f"Bearer {_KEY}"}, json={
            "operation": "create", "parameters": {"name": "bench", "schema": SCHEMA,
                                                  "event_time_field": "ts", "sql": SQL}})
        if reply.status_code != 200:
            raise RuntimeError(reply.get_data(as_text=True))
        data = write_ndjson(Path(tmp) / "events.ndjson", events * min(requests, 20))
        bodies = ndjson_batches(data, events)
        lean = app.wsgi_app
        assert isinstance(lean, EventsFastPath)
        paths: dict[str, WsgiApp] = {"lean": lean, "flask": lean.fallback}
        authorization = f"Bearer {_KEY}" if with_key else ""
        for app_path in paths.values():  # warm up: imports, caches, first connections
            _cpu_seconds(app_path, bodies, 3, authorization)
        per_request: dict[str, list[float]] = {"lean": [], "flask": []}
        for round_no in range(rounds):
            order = ["lean", "flask"] if round_no % 2 == 0 else ["flask", "lean"]
            for name in order:
                seconds = _cpu_seconds(paths[name], bodies, requests, authorization)
                per_request[name].append(seconds / requests * 1e6)
    medians = {name: statistics.median(values) for name, values in per_request.items()}
    return {
        "requests_per_round": requests, "events_per_request": events, "rounds": rounds,
        "rate_limit": rate_limit, "with_key": with_key,
        "cpu_us_per_request": {name: [round(v) for v in values]
                               for name, values in per_request.items()},
        "median_cpu_us_per_request": {name: round(v) for name, v in medians.items()},
        "median_cpu_us_per_event": {name: round(v / events, 3) for name, v in medians.items()},
        "saved_us_per_request": round(medians["flask"] - medians["lean"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="requests per path per round")
    parser.add_argument("--events", type=int, default=1000, help="events per request")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate-limit", type=int, default=0,
                        help="requests per key per minute (0: off, as in make bench)")
    parser.add_argument("--without-key", action="store_true",
                        help="send no key: 401s, the dispatch and envelope alone")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.requests, args.events, args.rounds, args.rate_limit,
                             with_key=not args.without_key), indent=2))


if __name__ == "__main__":
    main()
