"""How long object-store calls take against the local GCS and S3 API servers.

``python -m benchmarks.bench_storage``

The timings the storage tests used to assert (a benchmark measures, a test
checks behaviour). Each figure is printed next to the budget the tests held
it to, as JSON, one object per measurement:

* ``small_epoch``: a second bounded Beam pipeline writing 1,500 rows of
  Parquet through ``fileio.WriteToFiles`` (budget 5 s);
* ``fresh_gcs_io``: a new interpreter's first create/exists/delete on gs://
  with no Google credentials anywhere (budget 3 s: Beam alone backs off ~25 s);
* ``probe_ok`` / ``probe_dead``: ``check_sink_reachable`` on a live server
  (2 s) and on a stopped one with ``timeout=2`` (5 s);
* ``write_dead`` / ``fs_dead``: a pipeline write and each filesystem call
  against a stopped server, retries bounded to ``FAST_DEADLINE`` seconds
  (budget 6 x deadline + 5 s).

The servers are started here, on loopback (``tests/servers.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from beam_pipelines.storage import files, process, settings
from tests import servers
from transforms.sinks import make_sink

__all__ = ["main", "measure_storage"]

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "pdo-bench"
FAST_DEADLINE = 2.0


def _seconds(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _seconds_to_fail(call: Callable[[], Any]) -> float:
    """How long ``call`` takes to raise (calls to a stopped server must fail)."""
    start = time.perf_counter()
    try:
        call()
    except Exception:  # any failure ends the measurement
        return time.perf_counter() - start
    raise RuntimeError("a call to a stopped server succeeded")


def _write_parquet(uri: str, options: dict[str, str], rows: int) -> None:
    import apache_beam as beam
    from apache_beam.io import fileio
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    table = pa.table({"id": pa.array(range(rows), pa.int64())})
    popts = process.beam_options_for_sink(uri, options)
    with beam.Pipeline(runner=FnApiRunner(), options=popts) as p:
        _ = (p
             | beam.Create([table], reshuffle=False)
             | fileio.WriteToFiles(settings.beam_path(uri),
                                   sink=lambda dest: make_sink("parquet", "zstd"),
                                   file_naming=fileio.single_file_naming("part", ".parquet")))


def _fresh_gcs_io(endpoint_url: str) -> float:
    script = textwrap.dedent(f"""
        import time
        from beam_pipelines.storage import files, process, settings
        uri = "gs://{BUCKET}/fresh/x.txt"
        fs = files.filesystem_for(uri, {{"endpoint_url": "{endpoint_url}"}})
        t = time.perf_counter()
        with fs.create(uri) as f:
            f.write(b"hi")
        fs.exists(uri)
        fs.delete([uri])
        print(time.perf_counter() - t)
    """)
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GOOGLE_", "GCLOUD", "CLOUDSDK", "STORAGE_EMULATOR"))}
        env.update(HOME=home, CLOUDSDK_CONFIG=os.path.join(home, "gcloud"),
                   PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _dead(server_cls: type) -> tuple[str, dict[str, str]]:
    server = server_cls().start()
    if server_cls is servers.GcsServer:
        servers.create_gcs_bucket(server.endpoint_url, BUCKET)
        options = {"endpoint_url": server.endpoint_url}
        scheme = "gs"
    else:
        servers.create_s3_bucket(server.endpoint_url, BUCKET)
        options = {"endpoint_url": server.endpoint_url, "region": "us-east-1",
                   "access_key_id": "k", "secret_access_key": "s"}
        scheme = "s3"
    server.stop()
    return f"{scheme}://{BUCKET}/dead", options


Record = Callable[[str, str, float, float], None]


def _measure_live(scheme: str, options: dict[str, str], record: Record) -> None:
    uri = f"{scheme}://{BUCKET}/bench/events"
    _write_parquet(uri, options, 1500)  # the first run imports and connects
    record("small_epoch", scheme, _seconds(lambda: _write_parquet(uri, options, 1500)), 5.0)
    record("probe_ok", scheme, _seconds(
        lambda: files.check_sink_reachable(f"{scheme}://{BUCKET}/p", options)), 2.0)


def _measure_dead(server_cls: type, record: Record) -> None:
    base, options = _dead(server_cls)
    scheme = base.split(":")[0]
    budget = 6 * FAST_DEADLINE + 5
    record("probe_dead", scheme, _seconds_to_fail(
        lambda: files.check_sink_reachable(base, options, timeout=2)), 5.0)
    record("write_dead", scheme, _seconds_to_fail(lambda: _write_parquet(base, options, 10)), budget)
    fs = files.filesystem_for(base, options)
    calls = {"match": lambda: fs.match([base + "/**"]),
             "exists": lambda: fs.exists(base + "/x"),
             "delete": lambda: fs.delete([base + "/x"]),
             "rename": lambda: fs.rename([base + "/x"], [base + "/y"]),
             "list_files": lambda: files.list_files(base, options)}
    for name, call in calls.items():
        record(f"fs_dead_{name}", scheme, _seconds_to_fail(call), budget)


def measure_storage() -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    def record(name: str, scheme: str, seconds: float, budget: float) -> None:
        results.append({"measure": name, "scheme": scheme, "seconds": round(seconds, 3),
                        "budget_seconds": budget, "within_budget": seconds < budget})

    with servers.GcsServer() as gcs, servers.S3Server() as s3:
        servers.create_gcs_bucket(gcs.endpoint_url, BUCKET)
        servers.create_s3_bucket(s3.endpoint_url, BUCKET)
        _measure_live("gs", gcs.sink_options(), record)
        _measure_live("s3", s3.sink_options(), record)
        record("fresh_gcs_io", "gs", _fresh_gcs_io(gcs.endpoint_url), 3.0)
    process.reset_process_state()

    process.configure_retries(FAST_DEADLINE)
    try:
        _measure_dead(servers.GcsServer, record)
        _measure_dead(servers.S3Server, record)
    finally:
        process.configure_retries(process.DEFAULT_RETRY_DEADLINE)
        process.reset_process_state()
    return results


def main() -> None:
    results = measure_storage()
    for result in results:
        print(json.dumps(result))
    over = [r for r in results if not r["within_budget"]]
    if over:
        print(f"{len(over)} of {len(results)} measurements over budget", file=sys.stderr)


if __name__ == "__main__":
    main()
