"""How long upgrading an old SQLite event buffer to the log takes.

``python -m benchmarks.bench_upgrade [requests] [events_per_request]``

Copies the 78d94f8 fixture (tests/fixtures/upgrade_78d94f8), grows the
``orders`` buffer to ``requests`` uncommitted rows of ``events_per_request``
events each (the old schema's rows, as the old server wrote them: one Arrow
IPC stream per request), then times ``upgrade_data_dir``. Prints one JSON
object: rows, events, megabytes and seconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from contextlib import closing

import pyarrow as pa
import pyarrow.ipc as ipc
from sqlalchemy import select

from beam_pipelines.catalog.store import PipelineRow, Store, default_database_url
from beam_pipelines.runners.local.buffer import buffer_path
from beam_pipelines.runners.local.upgrade import upgrade_data_dir
from tests.upgrade_fixture import copy_fixture


def _ipc(events: int) -> bytes:
    table = pa.table({"seq": pa.array(range(events), pa.int64()),
                      "payload": pa.array([f"payload-{i:08d}-" + "x" * 24 for i in range(events)])})
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = copy_fixture(os.path.join(tmp, "data"))
        store = Store(default_database_url(data_dir))
        store.create_all()
        with store.reading() as s:
            orders = s.scalars(select(PipelineRow.id).where(PipelineRow.name == "orders")).one()
        blob = _ipc(events)
        with closing(sqlite3.connect(buffer_path(data_dir, orders))) as con:
            (last,) = con.execute("SELECT max(seq) FROM batches").fetchone()
            now = time.time()
            con.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                            ((last + 1 + k, events, len(blob), now, blob)
                             for k in range(requests)))
            con.commit()
        started = time.perf_counter()
        upgraded = upgrade_data_dir(store, data_dir)
        seconds = time.perf_counter() - started
        moved = next(u for u in upgraded if u.pipeline_id == orders)
        print(json.dumps({"rows": moved.requests, "events": moved.events,
                          "mb": round(requests * len(blob) / 1e6, 1),
                          "seconds": round(seconds, 2)}))
        store.dispose()


if __name__ == "__main__":
    main()
