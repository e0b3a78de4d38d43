"""How long upgrading an old SQLite event buffer to the log takes.

``python -m benchmarks.bench_upgrade [requests] [events_per_request]``

Copies the 78d94f8 fixture (tests/fixtures/upgrade_78d94f8), grows the
``orders`` buffer to ``requests`` uncommitted rows of ``events_per_request``
events each (the old schema's rows, as the old server wrote them: one Arrow
IPC stream per request), then times ``upgrade_data_dir``. Prints one JSON
object: rows, events, the old file's megabytes and seconds.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from sqlalchemy import select

from beam_pipelines.catalog.store import PipelineRow, Store, default_database_url
from beam_pipelines.runners.local.buffer import buffer_path
from beam_pipelines.runners.local.upgrade import upgrade_data_dir
from tests.upgrade_fixture import copy_fixture, grow_old_buffer


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = copy_fixture(os.path.join(tmp, "data"))
        store = Store(default_database_url(data_dir))
        store.create_all()
        with store.reading() as s:
            orders = s.scalars(select(PipelineRow.id).where(PipelineRow.name == "orders")).one()
        path = buffer_path(data_dir, orders)
        grow_old_buffer(path, requests, events)
        size = os.path.getsize(path)
        started = time.perf_counter()
        upgraded = upgrade_data_dir(store, data_dir)
        seconds = time.perf_counter() - started
        moved = next(u for u in upgraded if u.pipeline_id == orders)
        print(json.dumps({"rows": moved.requests, "events": moved.events,
                          "old_file_mb": round(size / 1e6, 1),
                          "seconds": round(seconds, 2)}))
        store.dispose()


if __name__ == "__main__":
    main()
