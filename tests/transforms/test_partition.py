"""Partition paths come from event time and escaped column values."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from transforms.partition import escape_partition_values, split_partitions

UTC = timezone.utc


def test_time_and_column_partitions() -> None:
    table = pa.table({
        "country": ["de", "fr", "de", None],
        "_event_time": pa.array([datetime(2026, 1, 1, 5, tzinfo=UTC), datetime(2026, 1, 1, 6,
                                tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC),
                                 datetime(2026, 1, 2, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        "n": [1, 2, 3, 4]})
    parts = {k: v.column("n").to_pylist()
             for k, v in split_partitions(table, "country={country}/dt=%Y-%m-%d",
                                          datetime(2000, 1, 1, tzinfo=UTC))}
    assert parts == {"country=de/dt=2026-01-01": [1], "country=fr/dt=2026-01-01": [2],
                     "country=de/dt=2026-01-02": [3], "country=__null__/dt=2026-01-02": [4]}


def test_without_event_time_the_fallback_time_is_used() -> None:
    table = pa.table({"n": [1, 2]})
    parts = dict(split_partitions(table, "dt=%Y-%m-%d/hour=%H",
                                  datetime(2026, 7, 4, 13, tzinfo=UTC)))
    assert list(parts) == ["dt=2026-07-04/hour=13"]
    assert parts["dt=2026-07-04/hour=13"].num_rows == 2


def test_hostile_values_cannot_leave_the_prefix() -> None:
    values = pa.array(["../../etc", "..", ".", "a/b", "", None, "x=y", "100%", "ok"])
    escaped = escape_partition_values(values).to_pylist()
    assert escaped == ["..%2F..%2Fetc", "%2E%2E", "%2E", "a%2Fb", "__null__", "__null__",
                       "x%3Dy", "100%25", "ok"]
    for segment in escaped:
        assert "/" not in segment and segment not in (".", "..")


def test_no_pattern_means_one_unpartitioned_file() -> None:
    table = pa.table({"n": [1, 2, 3]})
    assert [(k, v.num_rows) for k, v in split_partitions(table, None, datetime.now(UTC))] == \
        [("", 3)]
