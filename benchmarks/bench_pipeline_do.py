"""Contender: pipeline.do itself, end to end over HTTP.  *** PLACEHOLDER ***

NOT IMPLEMENTED YET: :func:`run_pipeline_do` returns ``None`` and
``benchmarks.run`` then records ``pipeline_eps`` and the latency figures as
``null``. It is to be filled in once the server exists.

Contract expected by ``benchmarks/run.py``:

``run_pipeline_do(dataset_path, batches, workdir) -> dict | None``

* ``dataset_path``: the NDJSON file (all events), for reference.
* ``batches``: the same events as a list of NDJSON request bodies of 1,000
  lines each (``benchmarks.dataset.ndjson_batches``), to POST to the ingest
  endpoint.
* ``workdir``: an empty scratch directory (server state, sink, ...).

It should start the server, create a pipeline whose SQL is
``benchmarks.workload.TRANSFORM_SQL``, partitioned by ``dt`` into a local
Parquet sink (zstd), send every batch, stop the pipeline (flush), and return::

    {
        "eps": float,                # events/s, first request to last file committed
        "output_dir": str,           # Hive-style dt=YYYY-MM-DD/*.parquet, checked by run.py
        "events": int,               # events sent (default: all)
        "seconds": float,
        "ack_p50_ms": float | None,  # HTTP ingest ack latency
        "ack_p99_ms": float | None,
        "visibility_p95_s": float | None,  # ack -> event readable in the sink
        "peak_rss_mb": float | None, # server process tree (benchmarks.measure.PeakRss)
    }

``run.py`` verifies ``output_dir`` against the expected rows per partition
and fails the whole run if they differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run_pipeline_do"]


def run_pipeline_do(
    dataset_path: str | Path, batches: list[bytes], workdir: str | Path
) -> dict[str, Any] | None:
    """Placeholder: returns None, so the contender is skipped."""
    return None
