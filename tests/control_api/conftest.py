"""Fixtures for the REST contract tests: real servers, a webhook receiver, helpers.

``api_server`` is one ``pipeline-do serve`` shared by the tests of this
package (each test uses its own pipeline names); tests that need other
settings (rate limits, a fuzzer's free hand) start their own with
``start_server``. Every server runs in its own process group, which is
killed at teardown.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.conftest import ADMIN_KEY
from tests.live import (
    LiveServer,
    wait_for,  # noqa: F401  (re-exported for the tests here)
)

WEBHOOK_ENV = {"PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE": "1",
               "PIPELINE_DO_WEBHOOK_RETRY_SECONDS": "0.2",
               "PIPELINE_DO_WEBHOOK_INGESTED_INTERVAL": "2"}


def sink_files(sink_dir: str, ext: str = "parquet") -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(sink_dir, "**", f"*.{ext}"), recursive=True)
                  if "/_tmp/" not in p)


def read_rows(sink_dir: str, columns: str = "*") -> list[tuple[Any, ...]]:
    """Every row in the sink's Parquet files, read with DuckDB."""
    import duckdb

    files = sink_files(sink_dir)
    if not files:
        return []
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT {columns} FROM read_parquet(?, union_by_name=true)",
                           [files]).fetchall()
    finally:
        con.close()


class Api:
    """Thin HTTP helper over a live server, with a chosen key."""

    def __init__(self, server: LiveServer, key: str = ADMIN_KEY) -> None:
        self.server = server
        self.url = server.url
        self.key = key

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}

    def call(self, operation: str, parameters: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, **body: Any) -> requests.Response:
        payload = {"operation": operation, "parameters": parameters or {}, **body}
        return requests.post(self.url + "/pipeline", json=payload, timeout=120,
                             headers={**self.headers(), **(headers or {})})

    def ok(self, operation: str, parameters: dict[str, Any] | None = None, **body: Any) -> Any:
        response = self.call(operation, parameters, **body)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def ndjson(self, pipeline: str, events: list[dict[str, Any]],
               headers: dict[str, str] | None = None) -> requests.Response:
        body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        return requests.post(f"{self.url}/pipelines/{pipeline}/events", data=body, timeout=60,
                             headers=self.headers(**{"Content-Type": "application/x-ndjson"},
                                                  **(headers or {})))

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers(), timeout=60, **kwargs)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: Any) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def start(env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> LiveServer:
        data_dir = tmp_path_factory.mktemp("server")
        server = LiveServer(str(data_dir), api_key=ADMIN_KEY, extra_env=env or {},
                            args=("--job-workers", "1", *args))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def api_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(WEBHOOK_ENV)


@pytest.fixture
def api(api_server: LiveServer) -> Api:
    return Api(api_server)


@pytest.fixture
def unique() -> Callable[[str], str]:
    counter = iter(range(1_000_000))

    def name(prefix: str) -> str:
        return f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 10**8}_{next(counter)}"
    return name


# -- a real webhook receiver ----------------------------------------------------


class Receiver:
    """An http.server on 127.0.0.1 that records every POST; can fail on purpose."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_next: dict[str, int] = {}  # event type -> how many 500s to answer first
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = json.loads(body)
                with receiver.lock:
                    failing = receiver.fail_next.get(event["type"], 0)
                    if failing:
                        receiver.fail_next[event["type"]] = failing - 1
                    receiver.received.append({"body": body, "event": event, "failed": bool(failing),
                                              "headers": dict(self.headers.items())})
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def events(self, pipeline_id: str | None = None, *, delivered_only: bool = True,
               ) -> list[dict[str, Any]]:
        with self.lock:
            items = list(self.received)
        return [r["event"] for r in items
                if (not delivered_only or not r["failed"])
                and (pipeline_id is None or r["event"]["data"].get("id") == pipeline_id)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def valid_signature(secret: str, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def make_key(server: LiveServer, scope: str) -> str:
    """``pipeline-do keys create`` against the server's data dir; the key is the last line."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "control_api.cli", "keys", "create",
                          "--scope", scope, "--data-dir", server.data_dir],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return out.strip().splitlines()[-1]
