"""The plan cache: one compiled plan per pipeline, SQL and sink, re-bound per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipelines.model.layout import part_file_name
from beam_pipelines.runners.local.plan_cache import PlanCache, compile_epoch_plan, run_epoch_pipeline
from tests.beam_pipelines.compiler.graph_fixtures import PIPELINE_ID, epoch_spec, fill_buffer


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    fill_buffer(str(tmp_path / "buffer.sqlite"), batches=3, rows=20)
    return tmp_path / "lake"


def test_every_epoch_reruns_one_plan_and_writes_its_own_rows_and_names(
        tmp_path: Path, lake: Path) -> None:
    plans = PlanCache()
    first = plans.plan_for(epoch_spec(str(tmp_path), 1))
    for epoch in (1, 2, 3):
        entries = run_epoch_pipeline(epoch_spec(str(tmp_path), epoch), plans)
        assert sorted(e.path for e in entries) == [
            part_file_name(PIPELINE_ID, epoch, 0, "parquet", "k=a"),
            part_file_name(PIPELINE_ID, epoch, 0, "parquet", "k=b")]
        ns = sorted(n for e in entries for n in pq.read_table(lake / e.path)
                    .column("n").to_pylist())
        assert ns == list(range((epoch - 1) * 20, epoch * 20))
        assert (lake / "_tmp" / PIPELINE_ID / f"epoch-{epoch:010d}").is_dir()
    assert len(plans) == 1 and plans.plan_for(epoch_spec(str(tmp_path), 3)) is first


def test_a_new_sql_is_a_new_plan_and_the_oldest_plan_leaves_a_full_cache(
        tmp_path: Path, lake: Path) -> None:
    plans = PlanCache(max_plans=2)
    for n, sql in enumerate(["SELECT n, k FROM events", "SELECT n + 1 AS n, k FROM events",
                             "SELECT n + 2 AS n, k FROM events"]):
        entries = run_epoch_pipeline(epoch_spec(str(tmp_path), 1, sql=sql), plans)
        assert min(n_ for e in entries
                   for n_ in pq.read_table(lake / e.path).column("n").to_pylist()) == n
    assert len(plans) == 2


def test_only_the_spec_split_and_scratch_directory_are_bound_to_the_epoch(
        tmp_path: Path) -> None:
    plan = compile_epoch_plan(epoch_spec(str(tmp_path), 1))
    names = sorted(plan.proto.components.transforms[t].unique_name for t in plan.epoch_steps)
    assert names[:2] == ["Epoch/EpochSpec", "Epoch/SplitPartitions/ParDo(_SplitPartitionsFn)"]
    assert len(names) == 5 and all(n.startswith("Epoch/WriteFiles/") for n in names[2:])
    # Binding copies: the compiled proto keeps the epoch it was built for.
    before = plan.proto.SerializeToString()
    assert plan.for_epoch(epoch_spec(str(tmp_path), 7)).SerializeToString() != before
    assert plan.proto.SerializeToString() == before


def test_an_epoch_whose_sql_keeps_no_row_writes_nothing(tmp_path: Path, lake: Path) -> None:
    spec = epoch_spec(str(tmp_path), 1, sql="SELECT n, k FROM events WHERE n < 0")
    assert run_epoch_pipeline(spec, PlanCache()) == []
    assert not Path(spec.manifest_path).exists() or json.loads(
        Path(spec.manifest_path).read_text()) == []
    assert list(lake.rglob("*.parquet")) == []
