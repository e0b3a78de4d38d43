"""Backpressure on the real server: a full backlog answers 503 with Retry-After.

Nothing of a refused request is kept, nothing accepted before is lost, and
ingest is accepted again once epochs drain the backlog.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import requests

from tests.live import LiveServer, query, wait_for

SCHEMA = [{"name": "seq", "type": "int64", "required": True},
          {"name": "payload", "type": "string"}]
REQUEST = 1000


def _batch(first: int) -> bytes:
    return b"\n".join(json.dumps({"seq": i, "payload": "x" * 40}).encode()
                      for i in range(first, first + REQUEST))


def _fill_until_refused(server: LiveServer, name: str) -> tuple[list[int], requests.Response]:
    """Ingest requests of ``REQUEST`` events until one is refused: the first ``seq`` of
    each acknowledged request, and the refusal."""
    acked: list[int] = []
    for first in range(0, 100 * REQUEST, REQUEST):
        response = server.post_ndjson(name, _batch(first))
        if response.status_code != 200:
            return acked, response
        acked.append(first)
    raise AssertionError("the cap never refused a request")


def _assert_written_once(parquet_glob: str, acked: list[int]) -> None:
    """Every event of every acknowledged request is in the files, once; nothing else is."""
    written = Counter(r[0] for r in query(f"SELECT seq FROM read_parquet('{parquet_glob}')"))
    assert max(written.values()) == 1
    assert set(written) == {i for first in acked for i in range(first, first + REQUEST)}


def test_a_full_backlog_answers_503_then_drains_and_loses_nothing(tmp_path: Any) -> None:
    server = LiveServer(str(tmp_path), extra_env={
        "PIPELINE_DO_MAX_BACKLOG_BYTES": str(400_000)}).start()
    try:
        server.ok("create", {"name": "capped", "schema": SCHEMA,
                             "sink": {"roll": {"interval_seconds": 0.2}}})
        acked, refused = _fill_until_refused(server, "capped")  # not started: nothing commits
        assert acked, "the cap refused the first request"
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert body["error"]["details"]["reason"] == "backlog_full"

        server.ok("start", {"name": "capped"})
        wait_for(lambda: server.post_ndjson("capped", _batch(10**6)).status_code == 200,
                 timeout=180, interval=0.2, message="ingest accepted again after the drain")
        acked.append(10**6)
        server.ok("stop", {"name": "capped"}, options={"timeout": 120_000})
        _assert_written_once(f"{tmp_path}/lake/capped/**/*.parquet", acked)
    finally:
        server.kill()


def test_a_sink_outage_fills_the_backlog_then_heals_and_a_stop_meanwhile_times_out_cleanly(
        tmp_path: Any) -> None:
    from tests.beam_pipelines.storage.test_faults import DiskGcsServer
    from tests.stores import NO_STORAGE_ENV, start_store

    gcs = start_store("gs", DiskGcsServer(tmp_path / "gcs-disk"))
    server = LiveServer(str(tmp_path / "server"), extra_env={
        **NO_STORAGE_ENV, "PIPELINE_DO_STORAGE_RETRY_DEADLINE": "1",
        "PIPELINE_DO_MAX_BACKLOG_BYTES": str(400_000)})
    (tmp_path / "server").mkdir()
    try:
        server.start()
        server.ok("create", {"name": "outage", "schema": SCHEMA, "sink": {
            "uri": gcs.uri("outage"), "options": gcs.options, "roll": {"interval_seconds": 0.2}}})
        server.ok("start", {"name": "outage"})
        gcs.server.stop()  # the sink goes away: nothing commits, the backlog grows
        acked, refused = _fill_until_refused(server, "outage")
        assert refused.status_code == 503
        assert refused.headers.get("Retry-After")

        # A stop during the outage cannot flush: it times out (504) and leaves a
        # pipeline that can be resumed.
        stopping = server.call("stop", {"name": "outage"}, options={"timeout": 1500})
        assert stopping.status_code == 504 and stopping.json()["error"]["code"] == "TIMEOUT"
        assert server.ok("resume", {"name": "outage"})["status"] == "running"

        gcs.server.start()  # same port, same disk
        wait_for(lambda: server.post_ndjson("outage", _batch(10**6)).status_code == 200,
                 timeout=120, interval=0.5, message="ingest accepted again after the outage")
        acked.append(10**6)
        server.ok("stop", {"name": "outage"}, options={"timeout": 120_000})
        objects = gcs.download("outage", str(tmp_path / "read"))
        assert objects
        _assert_written_once(f"{tmp_path}/read/**/*.parquet", acked)
    finally:
        server.kill()
        gcs.server.stop()
