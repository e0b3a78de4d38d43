"""The epoch graph pickles and runs on a runner that serializes its DoFns.

No plan cache, no ``FileSystems.set_options``, no table of running epochs is
set up first: the graph carries its epoch as constructor arguments and
element data, which is what a Dataflow or Flink worker would receive.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines.compiler.epoch_graph import EpochGraph, SplitEpochPartitions
from beam_pipelines.model.layout import part_file_name
from beam_pipelines.runners.local.buffer_source import ReadBufferRange
from tests.beam_pipelines.compiler.graph_fixtures import PIPELINE_ID, epoch_spec, fill_buffer
from transforms.decode import TIMESTAMP

ROOT = Path(__file__).resolve().parents[3]


def _file_name(result: Any) -> str:
    return str(result.file_name)


def test_the_pickled_graph_runs_on_the_bundle_based_runner(tmp_path: Path) -> None:
    fill_buffer(str(tmp_path / "buffer.sqlite"), batches=2, rows=30)
    spec = epoch_spec(str(tmp_path), 2)
    graph = pickle.loads(pickle.dumps(EpochGraph(spec, ReadBufferRange())))

    with test_pipeline.TestPipeline(runner=BundleBasedDirectRunner()) as p:
        written = p | graph | beam.Map(_file_name)
        assert_that(written, equal_to([part_file_name(PIPELINE_ID, 2, 0, "parquet", "k=a"),
                                       part_file_name(PIPELINE_ID, 2, 0, "parquet", "k=b")]))

    lake = tmp_path / "lake"
    rows = {k: pq.read_table(lake / part_file_name(PIPELINE_ID, 2, 0, "parquet", f"k={k}"))
            for k in "ab"}
    assert sorted(rows["a"].column("n").to_pylist() + rows["b"].column("n").to_pylist()) \
        == list(range(30, 60))  # the epoch's request only
    assert set(rows["b"].column("k").to_pylist()) == {"b"}
    manifest = json.loads((tmp_path / "epoch-2.manifest.json").read_text())
    assert sorted((e["partition"], e["rows"]) for e in manifest) == [
        ("k=a", rows["a"].num_rows), ("k=b", rows["b"].num_rows)]
    assert {e["min_event_time"] for e in manifest} == {1769904000.0}  # 2026-02-01
    # WriteToFiles staged the files in the epoch's own scratch directory.
    assert (lake / "_tmp" / PIPELINE_ID / "epoch-0000000002").is_dir()


_CHILD = """
import pickle, sys
import apache_beam as beam
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_pipeline import TestPipeline

graph = pickle.loads(sys.stdin.buffer.read())
with TestPipeline(runner=BundleBasedDirectRunner()) as p:
    _ = p | graph
"""


def test_the_graph_pickled_here_runs_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """What shipping it to a worker means: only the pickled graph crosses over."""
    fill_buffer(str(tmp_path / "buffer.sqlite"), batches=1, rows=10)
    spec = epoch_spec(str(tmp_path), 1, sql="SELECT n * 2 AS twice FROM events",
                      partition_by=None)
    payload = pickle.dumps(EpochGraph(spec, ReadBufferRange()))
    child = subprocess.run([sys.executable, "-c", _CHILD], input=payload, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr.decode()[-3000:]
    written = pq.read_table(tmp_path / "lake" / part_file_name(PIPELINE_ID, 1, 0, "parquet"))
    assert sorted(written.column("twice").to_pylist()) == [2 * n for n in range(10)]


def _partition_rows(element: tuple[tuple[str, int], Any]) -> tuple[str, int, list[int]]:
    (partition, epoch), rows = element
    return partition, epoch, sorted(rows.column("n").to_pylist())


def test_the_split_step_keys_rows_by_partition_and_epoch_and_records_them(
        tmp_path: Path) -> None:
    spec = epoch_spec(str(tmp_path), 4, partition_by="dt=%Y-%m-%d/k={k}")
    rows = pa.table({"n": [1, 2, 3, 4], "k": ["a", "b", "a", None],
                     "_event_time": pa.array([datetime(2026, 2, 1, tzinfo=timezone.utc)] * 3
                                             + [None], TIMESTAMP)})
    with test_pipeline.TestPipeline(runner=BundleBasedDirectRunner()) as p:
        tables = p | "Rows" >> beam.Create([rows], reshuffle=False).with_output_types(pa.Table)
        parts = tables | SplitEpochPartitions(spec) | beam.Map(_partition_rows)
        assert_that(parts, equal_to([("dt=2026-02-01/k=a", 4, [1, 3]),
                                     ("dt=2026-02-01/k=b", 4, [2]),
                                     ("dt=2026-03-01/k=__null__", 4, [4])]))  # planned_at
    manifest = json.loads(Path(spec.manifest_path).read_text())
    assert sorted((e["path"], e["rows"]) for e in manifest) == [
        (part_file_name(PIPELINE_ID, 4, 0, "parquet", "dt=2026-02-01/k=a"), 2),
        (part_file_name(PIPELINE_ID, 4, 0, "parquet", "dt=2026-02-01/k=b"), 1),
        (part_file_name(PIPELINE_ID, 4, 0, "parquet", "dt=2026-03-01/k=__null__"), 1)]
    assert (tmp_path / "lake" / "dt=2026-02-01" / "k=a").is_dir()  # made for the local rename
