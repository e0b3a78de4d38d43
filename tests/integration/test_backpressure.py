"""Backpressure on the real server: a full backlog answers 503 with Retry-After.

Nothing of a refused request is kept, nothing accepted before is lost, and
ingest is accepted again once epochs drain the backlog.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tests.live import LiveServer, query, wait_for

SCHEMA = [{"name": "seq", "type": "int64", "required": True},
          {"name": "payload", "type": "string"}]
REQUEST = 1000


def _batch(first: int) -> bytes:
    return b"\n".join(json.dumps({"seq": i, "payload": "x" * 40}).encode()
                      for i in range(first, first + REQUEST))


def test_a_full_backlog_answers_503_then_drains_and_loses_nothing(tmp_path: Any) -> None:
    server = LiveServer(str(tmp_path), extra_env={
        "PIPELINE_DO_MAX_BACKLOG_BYTES": str(400_000)}).start()
    try:
        server.ok("create", {"name": "capped", "schema": SCHEMA,
                             "sink": {"roll": {"interval_seconds": 0.2}}})
        acked: list[int] = []
        refused = None
        for first in range(0, 100 * REQUEST, REQUEST):  # not started: nothing commits
            response = server.post_ndjson("capped", _batch(first))
            if response.status_code != 200:
                refused = response
                break
            acked.append(first)
        assert refused is not None and acked, "the cap never refused a request"
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert body["error"]["details"]["reason"] == "backlog_full"

        server.ok("start", {"name": "capped"})
        wait_for(lambda: server.post_ndjson("capped", _batch(10**6)).status_code == 200,
                 timeout=60, interval=0.2, message="ingest accepted again after the drain")
        acked.append(10**6)
        server.ok("stop", {"name": "capped"}, options={"timeout": 120_000})
        rows = query(f"SELECT seq FROM read_parquet('{tmp_path}/lake/capped/**/*.parquet')")
        written = Counter(r[0] for r in rows)
        assert max(written.values()) == 1
        assert set(written) == {i for first in acked for i in range(first, first + REQUEST)}
    finally:
        server.kill()
