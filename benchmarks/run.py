"""Run every contender on the same data set and record the results.

``python -m benchmarks.run [--events N] [--beam-events N] [--duckdb-repeats K]``

1. Generate the NDJSON data set once (``benchmarks.dataset``) in a temp dir.
2. Compute the expected output once with DuckDB (rows per ``dt`` partition
   and ``sum(amount_gross)``, ``benchmarks.workload.expected_summary``).
3. Run the contenders: ``duckdb`` (reference), ``beam_naive`` (idiomatic
   Beam, optionally on the first ``--beam-events`` events only) and
   ``pipeline_do`` (``benchmarks.bench_pipeline_do``; skipped while it
   returns None).
4. Check every contender's Parquet output against the expectation; any
   difference raises :class:`benchmarks.workload.OutputMismatch` and the run
   fails without writing results.
5. Write ``benchmarks/results/latest.json``, a dated copy
   ``benchmarks/results/<YYYY-MM-DD>.json`` and ``latest.png`` (events/s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import bench_pipeline_do
from benchmarks.bench_beam_naive import run_beam_naive
from benchmarks.bench_duckdb import run_duckdb
from benchmarks.dataset import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EVENTS,
    DEFAULT_SEED,
    file_sha256,
    ndjson_batches,
    write_head,
    write_ndjson,
)
from benchmarks.measure import PeakRss
from benchmarks.workload import Summary, check_output, expected_summary, output_summary

__all__ = ["main", "plot_results", "run_benchmarks", "write_results"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LABELS = {
    "duckdb": "DuckDB alone",
    "beam_naive": "Beam, naive",
    "pipeline_do": "pipeline.do",
}
_LOG = logging.getLogger("benchmarks")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("apache-beam", "duckdb", "pyarrow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _verified(name: str, expected: Summary, output_dir: str | Path) -> dict[str, Any]:
    actual = output_summary(output_dir)
    check_output(name, expected, actual)
    _LOG.info("%s: output verified, %d rows in %d files", name, actual.rows, actual.files)
    return {
        "rows_written": actual.rows,
        "files": actual.files,
        "output_bytes": actual.bytes,
    }


def _run_duckdb(dataset: Path, events: int, expected: Summary, workdir: Path, repeats: int):
    runs = []
    for attempt in range(repeats):
        output_dir = workdir / f"duckdb-{attempt}"
        with PeakRss() as rss:
            result = run_duckdb(dataset, output_dir, events)
        result.update(_verified("duckdb", expected, output_dir))
        result["peak_rss_mb"] = rss.peak_mb
        runs.append(result)
        _LOG.info(
            "duckdb run %d: %.2f s, %.0f events/s",
            attempt + 1,
            result["seconds"],
            result["eps"],
        )
        shutil.rmtree(output_dir)
    seconds = statistics.median(r["seconds"] for r in runs)
    summary = dict(runs[0])
    summary.update(
        seconds=seconds,
        eps=events / seconds,
        seconds_all=[r["seconds"] for r in runs],
        peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
        statistic=f"median of {repeats} runs",
    )
    summary.pop("output_dir")
    return summary


def _run_beam(dataset: Path, events: int, beam_events: int, expected: Summary, workdir: Path):
    if beam_events < events:
        subset = workdir / f"events-head-{beam_events}.ndjson"
        beam_events = write_head(dataset, subset, beam_events)
        dataset, expected = subset, expected_summary(subset)
    output_dir = workdir / "beam_naive"
    with PeakRss() as rss:
        result = run_beam_naive(dataset, output_dir, beam_events)
    result.update(_verified("beam_naive", expected, output_dir))
    result["peak_rss_mb"] = rss.peak_mb
    result["subset"] = beam_events < events
    result.pop("output_dir")
    _LOG.info(
        "beam_naive: %d events in %.2f s, %.0f events/s",
        beam_events,
        result["seconds"],
        result["eps"],
    )
    return result


def _run_pipeline_do(dataset: Path, expected: Summary, workdir: Path):
    batches = ndjson_batches(dataset, DEFAULT_BATCH_SIZE)
    scratch = workdir / "pipeline_do"
    scratch.mkdir()
    result = bench_pipeline_do.run_pipeline_do(dataset, batches, scratch)
    del batches
    if result is None:
        _LOG.info("pipeline_do: not implemented yet, skipped")
        return None
    result = dict(result)
    result.update(_verified("pipeline_do", expected, result["output_dir"]))
    result.pop("output_dir")
    _LOG.info("pipeline_do: %.0f events/s", result["eps"])
    return result


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def run_benchmarks(
    events: int = DEFAULT_EVENTS,
    beam_events: int | None = None,
    duckdb_repeats: int = 3,
    workdir: Path | None = None,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Run all contenders in ``workdir`` (a temp dir if None); return the results dict."""
    beam_events = events if beam_events is None else min(beam_events, events)
    with tempfile.TemporaryDirectory(prefix="pipeline-do-bench-") as tmp:
        workdir = Path(workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)

        dataset = workdir / "events.ndjson"
        started = time.perf_counter()
        write_ndjson(dataset, events, seed)
        generate_seconds = time.perf_counter() - started
        size = dataset.stat().st_size
        _LOG.info(
            "dataset: %d events, %d bytes, generated in %.2f s",
            events,
            size,
            generate_seconds,
        )
        expected = expected_summary(dataset)
        _LOG.info(
            "expected: %d rows in partitions %s",
            expected.rows,
            expected.rows_by_partition,
        )

        contenders = {
            "duckdb": _run_duckdb(dataset, events, expected, workdir, duckdb_repeats),
            "beam_naive": _run_beam(dataset, events, beam_events, expected, workdir),
            "pipeline_do": _run_pipeline_do(dataset, expected, workdir),
        }
        dataset_info = {
            "bytes": size,
            "bytes_per_event": size / events if events else None,
            "sha256": file_sha256(dataset),
            "seed": seed,
            "generate_seconds": generate_seconds,
            "expected_rows": expected.rows,
            "expected_rows_by_partition": expected.rows_by_partition,
        }

    pipeline = contenders["pipeline_do"] or {}
    pipeline_eps = pipeline.get("eps")
    duckdb_eps = contenders["duckdb"]["eps"]
    beam_eps = contenders["beam_naive"]["eps"]
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "events": events,
        "expected_rows": expected.rows,
        "duckdb_eps": duckdb_eps,
        "beam_naive_eps": beam_eps,
        "beam_naive_events": contenders["beam_naive"]["events"],
        "pipeline_eps": pipeline_eps,
        "ratio_vs_duckdb": _ratio(pipeline_eps, duckdb_eps),
        "ratio_vs_beam": _ratio(pipeline_eps, beam_eps),
        "ack_p50_ms": pipeline.get("ack_p50_ms"),
        "ack_p99_ms": pipeline.get("ack_p99_ms"),
        "visibility_p95_s": pipeline.get("visibility_p95_s"),
        "peak_rss_mb": pipeline.get("peak_rss_mb"),
        "cores": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "versions": _versions(),
        "platform": platform.platform(),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "dataset": dataset_info,
        "contenders": contenders,
        "notes": {
            "eps": "input events / wall seconds; Beam time includes pipeline build and SDK worker start-up",
            "contenders.*.peak_rss_mb": "peak RSS of the benchmark process tree "
            "(harness included) while the contender ran",
            "load_average_at_end": "1/5/15 min load; other work on the machine "
            "during the run lowers every figure",
            "contenders.pipeline_do.cpu_us_per_event": "CPU (user + system) of the "
            "throughput phase per event, by process: api = gunicorn workers (HTTP, "
            "parse, durable append) and their SQL forkservers, epoch_workers = SQL and Parquet, manager = "
            "scheduler and buffer clean-up, client = the benchmark's HTTP clients",
        },
    }


def plot_results(results: dict[str, Any], path: Path) -> None:
    """Bar chart of events/s per contender (log scale) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values, labels = [], [], []
    for key, result in results["contenders"].items():
        if not result:
            continue
        label = LABELS.get(key, key)
        if result.get("subset"):
            label += f"\n(first {result['events']:,} events)"
        names.append(label)
        values.append(result["eps"])
        labels.append(f"{result['eps']:,.0f}")

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.8 * len(names)), dpi=120)
    bars = ax.barh(names, values, color=["#4c72b0", "#dd8452", "#55a868"][: len(names)])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 3, max(values) * 6)
    ax.bar_label(bars, labels=labels, padding=4)
    ax.set_xlabel("events / second (log scale, higher is better)")
    ax.set_title(
        f"NDJSON → SQL → partitioned Parquet (zstd), {results['events']:,} events, "
        f"{results['cores']} cores, {results['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(results: dict[str, Any], results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Write latest.json, <date>.json and latest.png into ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    written = []
    for name in ("latest.json", f"{results['date']}.json"):
        (results_dir / name).write_text(text)
        written.append(results_dir / name)
    plot_results(results, results_dir / "latest.png")
    written.append(results_dir / "latest.png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        help="events in the data set (default: %(default)s)",
    )
    parser.add_argument(
        "--beam-events",
        type=int,
        default=None,
        help="run the naive Beam contender on the first N events only (default: all)",
    )
    parser.add_argument(
        "--duckdb-repeats",
        type=int,
        default=3,
        help="DuckDB runs; the median is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep data and outputs here instead of a temp dir",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.events <= 0:
        parser.error("--events must be positive")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    results = run_benchmarks(args.events, args.beam_events, args.duckdb_repeats, args.workdir)
    for path in write_results(results, args.results_dir):
        _LOG.info("wrote %s", path)
    summary = {
        k: results[k]
        for k in (
            "events",
            "duckdb_eps",
            "beam_naive_eps",
            "beam_naive_events",
            "pipeline_eps",
        )
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
