"""Partition paths come from event time and escaped column values."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.partition import (
    MAX_SEGMENT_BYTES,
    NULL_PARTITION,
    escape_partition_values,
    split_partitions,
)

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


def test_rows_keep_their_order_in_each_partition_whether_or_not_interleaved() -> None:
    """Rows already in runs are split without the sorting copy; interleaved ones are
    sorted (stably): either way each partition holds its rows in arrival order."""
    fallback = datetime(2000, 1, 1, tzinfo=UTC)
    for countries, expected in (
            (["de", "de", "fr", "fr", "it"], {"de": [0, 1], "fr": [2, 3], "it": [4]}),
            (["de", "fr", "de", "it", "fr"], {"de": [0, 2], "fr": [1, 4], "it": [3]})):
        table = pa.table({"country": countries, "n": list(range(len(countries)))})
        parts = [(k, v.column("n").to_pylist())
                 for k, v in split_partitions(table, "c={country}", fallback)]
        assert parts == [(f"c={c}", rows) for c, rows in expected.items()]


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


# -- any value becomes one bounded, safe, stable segment ------------------------------

_SEGMENT_VALUES = st.one_of(st.text(), st.text(alphabet=".~%/\\_null", max_size=12),
                            st.text(min_size=90, max_size=400),
                            st.sampled_from(["", ".", "..", "__null__", "%5F%5Fnull%5F%5F"]))


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(_SEGMENT_VALUES, min_size=1, max_size=30, unique=True))
def test_any_value_maps_to_one_safe_bounded_stable_segment(values: list[str]) -> None:
    segments = escape_partition_values(pa.array(values, pa.string())).to_pylist()
    again = escape_partition_values(pa.array(list(reversed(values)), pa.string())).to_pylist()
    assert segments == list(reversed(again))  # deterministic, whatever the batch
    named = [s for v, s in zip(values, segments) if v != ""]
    assert len(set(named)) == len(named)  # distinct values stay distinct
    prefix = os.path.join(os.sep, "sink", "country=")
    for segment in segments:
        assert isinstance(segment, str) and segment
        assert len(segment.encode()) <= MAX_SEGMENT_BYTES
        assert "/" not in segment and "\\" not in segment and segment not in (".", "..")
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment)
        path = os.path.normpath(os.path.join(os.sep, "sink", segment))
        assert path.startswith(os.path.join(os.sep, "sink") + os.sep)
        assert os.path.normpath(prefix + segment).startswith(prefix)


def test_long_values_are_shortened_with_a_hash_and_empty_ones_named() -> None:
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    segments = escape_partition_values(pa.array([long_a, long_b, long_a, "", None, "__null__"])
                                       ).to_pylist()
    assert segments[0] == segments[2] != segments[1]
    assert segments[0].startswith("a" * 64 + "~") and len(segments[0]) == 64 + 1 + 16
    assert segments[3:] == [NULL_PARTITION, NULL_PARTITION, "%5F%5Fnull%5F%5F"]
    table = pa.table({"c": [long_a, "x"], "n": [1, 2]})
    parts = dict(split_partitions(table, "c={c}", datetime(2026, 1, 1, tzinfo=UTC)))
    assert set(parts) == {f"c={segments[0]}", "c=x"}
