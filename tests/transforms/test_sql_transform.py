"""``DuckDbSql`` as a Beam step: Arrow tables in, the query's result tables out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.sandbox import SqlError
from transforms.sql import DuckDbSql


def _pipeline() -> Any:
    return test_pipeline.TestPipeline(runner=BundleBasedDirectRunner())


def _rows(table: pa.Table) -> Iterator[tuple[Any, ...]]:
    yield from (tuple(row.values()) for row in table.to_pylist())


def _tables(p: Any, *tables: pa.Table) -> Any:
    # Tiny tables only: Create pickles its elements into the graph.
    return p | beam.Create(list(tables), reshuffle=False).with_output_types(pa.Table)


def test_each_input_table_gives_its_result_table() -> None:
    first = pa.table({"n": [1, 2, 3], "s": ["a", "b", "c"]})
    second = pa.table({"n": [10, 20], "s": ["x", "y"]})
    with _pipeline() as p:
        results = _tables(p, first, second) | DuckDbSql(
            "SELECT n * 2 AS twice, upper(s) AS s FROM events WHERE n <> 2")
        assert_that(results | beam.Map(lambda t: t.num_rows), equal_to([2, 2]), label="tables")
        assert_that(results | beam.FlatMap(_rows),
                    equal_to([(2, "A"), (6, "C"), (20, "X"), (40, "Y")]), label="rows")


def test_a_query_that_keeps_no_row_yields_no_table() -> None:
    with _pipeline() as p:
        results = _tables(p, pa.table({"n": [1, 2]})) | DuckDbSql(
            "SELECT n FROM events WHERE n > 5")
        assert_that(results, equal_to([]))


def test_runs_that_share_a_pool_key_give_the_same_rows() -> None:
    for _ in range(2):  # the second run borrows the first one's connection
        with _pipeline() as p:
            results = _tables(p, pa.table({"n": [1, 2, 3]})) | DuckDbSql(
                "SELECT sum(n) AS total FROM events", pool_key="test-shared")
            assert_that(results | beam.FlatMap(_rows), equal_to([(6,)]))


def test_refused_sql_fails_when_the_step_is_made() -> None:
    with pytest.raises(SqlError) as info:
        DuckDbSql("SELECT * FROM read_csv('/etc/passwd')")
    assert info.value.code == "refused"


def test_a_query_that_fails_on_the_events_fails_the_pipeline() -> None:
    with pytest.raises(Exception, match="Conversion Error"):
        with _pipeline() as p:
            _ = _tables(p, pa.table({"s": ["1", "x"]})) | DuckDbSql(
                "SELECT CAST(s AS INTEGER) AS n FROM events")
