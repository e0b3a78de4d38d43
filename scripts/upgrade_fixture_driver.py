"""Drive pipeline.do 78d94f8 (the last release with the SQLite event buffer) to
make the data directory that ``tests/fixtures/upgrade_78d94f8`` holds.

Run by ``scripts/make_upgrade_fixture.sh`` with the OLD tree first on
``PYTHONPATH``; it imports nothing from today's code. It leaves, in
``DATA_DIR`` (a fixed path, rewritten by the tests when they copy it):

* ``orders`` (running): epochs 1 and 2 committed (200 events), then three
  requests acknowledged and never committed (seqs 5-7, 60 events, 5 dead
  letters), the server killed with ``kill -9``; then epoch 3, planned over
  seq (4, 5], run by the old ``run_epoch`` up to its commit and killed there
  (its Parquet files in place and its manifest in ``tmp/``, not committed).
* ``clicks`` (paused): 20 events acknowledged, never committed, 1 dead letter.

and ``expected.json``: what the old server acknowledged and counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

SCHEMA = [{"name": "seq", "type": "int64", "required": True},
          {"name": "payload", "type": "string"}]
ROLL = {"interval_seconds": 3600, "max_events": 100}


def _lines(seqs: range, bad: int = 0) -> bytes:
    good = [json.dumps({"seq": i, "payload": f"p{i}"}) for i in seqs]
    bad_lines = [json.dumps({"seq": f"bad-{k}", "payload": "x"}) for k in range(bad)]
    return "\n".join(good + bad_lines).encode()


def _ingest(server: Any, name: str, seqs: range, bad: int = 0) -> list[int]:
    response = server.post_ndjson(name, _lines(seqs, bad))
    data = response.json()["data"]
    assert response.status_code == 200 and data["accepted"] == len(seqs), data
    return list(seqs)


def _wait(predicate: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def drive_server(data_dir: str) -> None:
    from control_api.devserver import LiveServer

    server = LiveServer(data_dir, extra_env={"PYTHONPATH": os.environ["PYTHONPATH"]}).start()
    acked: dict[str, list[int]] = {"orders": [], "clicks": []}
    try:
        server.ok("create", {"name": "orders", "schema": SCHEMA, "sink": {"roll": ROLL}})
        server.ok("start", {"name": "orders"})
        for first in range(0, 200, 50):
            acked["orders"] += _ingest(server, "orders", range(first, first + 50))
        _wait(lambda: server.ok("get", {"name": "orders"})["epochs"] == 2,
              "epochs 1 and 2 of orders to commit")
        committed = list(acked["orders"])
        acked["orders"] += _ingest(server, "orders", range(200, 230), bad=3)
        acked["orders"] += _ingest(server, "orders", range(230, 250), bad=2)
        acked["orders"] += _ingest(server, "orders", range(250, 260))
        server.ok("create", {"name": "clicks", "schema": SCHEMA, "sink": {"roll": ROLL}})
        server.ok("start", {"name": "clicks"})
        server.ok("pause", {"name": "clicks"})
        acked["clicks"] += _ingest(server, "clicks", range(1000, 1010), bad=1)
        acked["clicks"] += _ingest(server, "clicks", range(1010, 1020))
        counters = {name: {k: v for k, v in server.ok("get", {"name": name}).items()
                           if k in ("events_in", "bytes_in", "events_rejected", "epochs")}
                    for name in acked}
    finally:
        server.kill()  # kill -9 of the whole server: nothing flushed, nothing released
    with open(os.path.join(data_dir, "..", "expected.json"), "w") as f:
        json.dump({"acked": acked, "committed": {"orders": committed, "clicks": []},
                   "counters": counters}, f, indent=1, sort_keys=True)


def crash_epoch_before_commit(data_dir: str) -> None:
    """Plan epoch 3 of ``orders`` over one request and run it with the old code,
    dying where ``commit_epoch`` would begin (a kill -9 after the files were written)."""
    from sqlalchemy import select

    from beam_pipelines.catalog.store import PipelineRow, Store, default_database_url
    from beam_pipelines.runners.local import epochs
    from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path

    store = Store(default_database_url(data_dir))
    with store.reading() as s:
        pipeline_id = s.scalars(select(PipelineRow.id).where(PipelineRow.name == "orders")).one()
    buffer = EventBuffer(buffer_path(data_dir, pipeline_id))
    # ways=2 halves the epoch: it takes seq 5 only (30 events); 6 and 7 stay unplanned.
    epoch = epochs.plan_epoch(store, pipeline_id, buffer, flush=True, ways=2)
    assert epoch == 3, epoch

    def die(*_args: Any, **_kwargs: Any) -> None:
        os._exit(9)

    epochs.commit_epoch = die  # type: ignore[assignment]
    epochs.run_epoch(store, data_dir, pipeline_id, epoch)


def main() -> None:
    data_dir = sys.argv[1]
    if len(sys.argv) > 2 and sys.argv[2] == "--crash-epoch":
        crash_epoch_before_commit(data_dir)
        return
    drive_server(data_dir)
    done = subprocess.run([sys.executable, __file__, data_dir, "--crash-epoch"], check=False)
    assert done.returncode == 9, done.returncode


if __name__ == "__main__":
    main()
