"""Many pipelines on one server, started with a host's common open-file limit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ADMIN_KEY
from tests.live import LiveServer, query, wait_for

PIPELINES = 60
EVENTS = 100  # per request; two requests per pipeline


@pytest.fixture
def server(tmp_path: Any) -> Iterator[LiveServer]:
    # 128 open files is what a process gets here without serve raising its
    # soft limit: ~5 files per pipeline receiving events ran the API workers
    # out of descriptors at ~20 pipelines (at ~200 with the common 1,024).
    live = LiveServer(str(tmp_path), api_key=ADMIN_KEY, open_files=128)
    live.start()
    try:
        yield live
    finally:
        live.kill()


def _post(server: LiveServer, names: list[str], failures: list[str]) -> None:
    body = b"\n".join(b'{"n": %d}' % i for i in range(EVENTS))
    for name in names:
        try:
            response = server.post_ndjson(name, body)
        except requests.RequestException as err:  # a dropped connection, not only a 500
            failures.append(f"{name}: {err}")
            continue
        if response.status_code != 200:
            failures.append(f"{name}: {response.status_code} {response.text[:200]!r}")


def test_sixty_pipelines_take_events_at_once_and_write_them_all(server: LiveServer,
                                                                tmp_path: Any) -> None:
    names = [f"p{k:02d}" for k in range(PIPELINES)]
    for name in names:
        server.ok("create", {"name": name, "schema": [{"name": "n", "type": "int64"}],
                             "sql": "SELECT n FROM events",
                             "sink": {"roll": {"interval_seconds": 0.5}}})
        server.ok("start", {"name": name})
    failures: list[str] = []
    for _round in range(2):
        clients = [threading.Thread(target=_post, args=(server, names[k::8], failures))
                   for k in range(8)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
    assert failures == []

    wait_for(lambda: all(server.ok("get", {"name": name})["events_out"] == 2 * EVENTS
                         for name in names), timeout=120, interval=0.5,
             message="every pipeline's events in its files")
    for name in names:
        info = server.ok("get", {"name": name})
        assert info["errors"] == 0, (name, info["last_error"])
        written = query(f"SELECT count(*), sum(n) FROM "
                        f"read_parquet('{tmp_path}/lake/{name}/**/*.parquet')")
        assert written == [(2 * EVENTS, 2 * sum(range(EVENTS)))], name
