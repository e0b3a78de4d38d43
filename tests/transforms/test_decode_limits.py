"""What decoding refuses per record: too deep, not UTF-8, out of range, unknown fields.

Every case goes through both entries (NDJSON bytes and parsed JSON arrays)
where both can carry it, and the good records around the bad one are kept.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines.model.definition import UNKNOWN_FIELD_POLICIES as DEFINITION_POLICIES
from beam_pipelines.model.definition import Field
from transforms.decode import (
    EXTRA,
    UNKNOWN_FIELD_POLICIES,
    DecodedBatch,
    arrow_schema,
    decode_json_lines,
    decode_objects,
)
from transforms.decode_records import screen_lines
from transforms.json_depth import (
    depth_exceeded,
    line_bounds,
    load_json_events,
    too_deep_segments,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
FIELDS = (Field("id", "int64", True), Field("s", "string"), Field("f", "float64"),
          Field("ts", "timestamp"), Field("day", "date"), Field("j", "json"))
LIMIT = 1 << 20


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def _ndjson(*lines: bytes, unknown_fields: str = "drop") -> DecodedBatch:
    return decode_json_lines(b"\n".join(lines), FIELDS, "ts", now=NOW, max_record_bytes=LIMIT,
                             unknown_fields=unknown_fields)


def _array(body: bytes, unknown_fields: str = "drop") -> DecodedBatch:
    parsed = load_json_events(body)
    return decode_objects(parsed.events, FIELDS, "ts", now=NOW, max_record_bytes=LIMIT,
                          body_bytes=len(body), unknown_fields=unknown_fields,
                          too_deep=parsed.too_deep)


def _codes(batch: DecodedBatch) -> dict[int, str]:
    return {r.index: r.code for r in batch.rejected}


# -- 1. nesting depth -------------------------------------------------------------


def test_nesting_is_measured_exactly_and_brackets_in_strings_do_not_count() -> None:
    assert not depth_exceeded(b'{"a": ' + _deep(63) + b"}")
    assert depth_exceeded(b'{"a": ' + _deep(64) + b"}")
    assert not depth_exceeded(b'{"a": "' + b"[" * 500 + b'"}')
    # An escaped quote does not end the string; an escaped backslash does not escape it.
    assert not depth_exceeded(b'{"a": "\\"' + b"[" * 500 + b'"}')
    assert depth_exceeded(b'{"a": "\\\\", "b": ' + _deep(70) + b"}")
    lines = b"\n".join([b'{"a": 1}', b'{"a": ' + _deep(10_000) + b"}", b"", _deep(65),
                        _deep(64), b'{"s": "' + b"{" * 100 + b'"}'])
    data = np.frombuffer(lines, dtype=np.uint8)
    assert too_deep_segments(data, *line_bounds(data)).tolist() == \
        [False, True, False, True, False, False]


def test_a_too_deep_line_is_rejected_alone_and_never_parsed() -> None:
    batch = _ndjson(b'{"id": 1}', b'{"id": 2, "j": ' + _deep(10_000) + b"}",
                    b'{"id": 3, "j": ' + _deep(63) + b"}")
    assert _codes(batch) == {1: "too_deep"}
    assert batch.table.column("id").to_pylist() == [1, 3]
    assert batch.rejected[0].record is not None and batch.rejected[0].record.startswith('{"id": 2')


def test_the_screens_body_wide_bound_lets_no_too_deep_record_through() -> None:
    """screen_lines skips the per-line count when the body's openers, less one per
    other record, fit the limit: at the limit exactly a record passes, one past it
    (alone, or among flat records) is too deep, however few openers the rest hold."""
    def screened(*lines: bytes) -> list[bool]:
        codes, _objects = screen_lines(b"\n".join(lines) + b"\n", 8)
        return [False] * len(lines) if codes is None else \
            [c == "too_deep" for c in codes.to_pylist()[:len(lines)]]

    flat = b'{"id": 1}'
    at_limit, past = b'{"j": ' + _deep(7) + b"}", b'{"j": ' + _deep(8) + b"}"
    assert screened(at_limit) == [False]
    assert screened(past) == [True]
    assert screened(flat, flat, at_limit, flat) == [False, False, False, False]
    assert screened(flat, past, flat) == [False, True, False]
    assert screened(b'{"s": "' + b"[" * 20 + b'"}', flat) == [False, False]  # in a string


def test_a_too_deep_element_of_a_json_array_is_rejected_alone() -> None:
    body = (b'[{"id": 1, "s": "a,]"}, {"id": 2, "j": ' + _deep(10_000) + b'}, {"id": 3},'
            b'{"id": 4, "j": ' + _deep(63) + b"}]")
    batch = _array(body)
    assert _codes(batch) == {1: "too_deep"}
    assert batch.table.column("id").to_pylist() == [1, 3, 4]
    assert batch.table.column("s").to_pylist()[0] == "a,]"
    single = load_json_events(b'{"id": 1, "j": ' + _deep(100) + b"}")
    assert single.events == [None] and list(single.too_deep) == [0]


def test_unstructured_pipelines_refuse_too_deep_records_too() -> None:
    body = b'{"a": 1}\n{"a": ' + _deep(5000) + b"}"
    batch = decode_json_lines(body, None, None, now=NOW, max_record_bytes=LIMIT)
    assert _codes(batch) == {1: "too_deep"}
    assert batch.table.column("value").to_pylist() == ['{"a": 1}']


# -- 2. UTF-8 ---------------------------------------------------------------------


def test_invalid_utf8_is_rejected_per_record_and_nothing_invalid_is_stored() -> None:
    for fields in (FIELDS, None):
        body = b'{"id": 1, "s": "caf\xc3\xa9"}\n{"id": 2, "s": "\xff\xfe"}\n' \
               b'{"id": 3, "s": "\xe2\x82"}\n{"id": 4}'
        batch = decode_json_lines(body, fields, None, now=NOW, max_record_bytes=LIMIT)
        assert _codes(batch) == {1: "invalid_utf8", 2: "invalid_utf8"}
        assert batch.table.num_rows == 2
        batch.table.validate(full=True)  # raises on invalid UTF-8 in any string column
        assert batch.rejected[0].record == '{"id": 2, "s": "\ufffd\ufffd"}'


def test_unpaired_surrogate_escapes_are_refused_in_both_entries() -> None:
    lines = _ndjson(b'{"id": 1, "s": "\\ud83d\\ude00"}', b'{"id": 2, "s": "\\ud800"}')
    assert lines.table.column("s").to_pylist() == ["\U0001f600"]
    assert _codes(lines) == {1: "parse_failure"}  # DuckDB's parser refuses the escape
    objects = _array(b'[{"id": 1, "s": "\\ud83d\\ude00"}, {"id": 2, "s": "\\ud800"}]')
    assert objects.table.column("s").to_pylist() == ["\U0001f600"]
    assert _codes(objects) == {1: "invalid_utf8"}  # json.loads accepts it, UTF-8 cannot hold it


# -- 3. ranges ---------------------------------------------------------------------


@pytest.mark.parametrize("record", [
    {"id": 1, "ts": 9223372036854775807},   # wrapped to 1969 before
    {"id": 1, "ts": -9223372036854775808},
    {"id": 1, "ts": 1e300},                 # a 500 for the whole batch before
    {"id": 1, "ts": 253402300800000},       # 10000-01-01 in epoch milliseconds
    {"id": 1, "ts": "0000-12-31T00:00:00Z"},
    {"id": 1, "ts": "10000-01-01T00:00:00Z"},
    {"id": 1, "day": "10000-01-01"},
    {"id": 1, "day": "0000-01-01"},
    {"id": 18446744073709551616},
    {"id": 9223372036854775808},
    {"id": 1e300},
    {"id": 1, "f": 1e400},
])
def test_values_that_cannot_be_stored_are_out_of_range(record: dict[str, object]) -> None:
    line = json.dumps(record).replace("Infinity", "1e400").encode()
    if b"1e400" not in line and "f" in record:
        line = line.replace(b"inf", b"1e400")
    good = b'{"id": 7, "ts": 1767323045000, "day": "2026-01-02"}'
    for batch in (_ndjson(good, line), _array(b"[" + good + b", " + line + b"]")):
        assert _codes(batch) == {1: "out_of_range"}, line
        assert batch.table.column("id").to_pylist() == [7]
        assert batch.rejected[0].message.startswith(("field ", "record holds NaN or an infinite"))


def test_edges_of_the_range_are_kept_and_read_back_by_duckdb(tmp_path: object) -> None:
    edges = [{"id": 1, "ts": -62135596800000, "day": "0001-01-01"},
             {"id": 2, "ts": 253402300799999, "day": "9999-12-31"},
             {"id": 3, "ts": "9999-12-31T23:59:59.999999Z", "f": 1.7976931348623157e308},
             {"id": 9223372036854775807}, {"id": -9223372036854775808}]
    body = b"\n".join(json.dumps(e).encode() for e in edges)
    for batch in (_ndjson(*body.split(b"\n")), _array(b"[" + b",".join(body.split(b"\n")) + b"]")):
        assert batch.rejected == []
        path = f"{tmp_path}/edges.parquet"
        pq.write_table(batch.table, path)
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            rows = con.execute(f"SELECT id, year(ts), year(day) FROM '{path}' ORDER BY id").fetchall()
        assert rows == [(-9223372036854775808, None, None), (1, 1, 1), (2, 9999, 9999),
                        (3, 9999, None), (9223372036854775807, None, None)]


def test_nan_and_infinity_are_out_of_range() -> None:
    batch = _ndjson(b'{"id": 1, "f": NaN}', b'{"id": 2, "f": -Infinity}', b'{"id": 3, "f": 1.5}')
    assert _codes(batch) == {0: "out_of_range", 1: "out_of_range"}
    assert batch.table.column("f").to_pylist() == [1.5]
    objects = _array(b'[{"id": 1, "f": NaN}, {"id": 2, "j": [Infinity]}, {"id": 3}]')
    assert _codes(objects) == {0: "out_of_range", 1: "out_of_range"}
    assert objects.table.column("id").to_pylist() == [3]
    assert objects.rejected[0].message == "record holds NaN or an infinite number"


# -- 4. unknown fields ---------------------------------------------------------------


def test_the_policies_agree_with_the_definition() -> None:
    assert UNKNOWN_FIELD_POLICIES == DEFINITION_POLICIES


def test_dropped_unknown_fields_are_named_in_the_result() -> None:
    for batch in (_ndjson(b'{"id": 1, "zz": 1}', b'{"id": 2, "yy": {"a": 1}}', b'{"id": 3}'),
                  _array(b'[{"id": 1, "zz": 1}, {"id": 2, "yy": {"a": 1}}, {"id": 3}]')):
        assert batch.rejected == [] and batch.unknown_fields == ["yy", "zz"]
        assert batch.table.schema == arrow_schema(FIELDS)
    assert _ndjson(b'{"id": 1}').unknown_fields == []
    # Names of rejected records are not reported as dropped.
    assert _ndjson(b'{"id": 1}', b'{"zz": 1}').unknown_fields == []


def test_reject_names_the_first_unknown_field_per_record() -> None:
    for batch in (_ndjson(b'{"id": 1}', b'{"id": 2, "zz": 1}', b'{"id": 3, "s": "x"}',
                          unknown_fields="reject"),
                  _array(b'[{"id": 1}, {"id": 2, "zz": 1}, {"id": 3, "s": "x"}]', "reject")):
        assert _codes(batch) == {1: "unknown_field"}
        assert "'zz'" not in batch.rejected[0].message and '"zz"' in batch.rejected[0].message
        assert "id" in batch.rejected[0].message  # the allowed names
        assert batch.table.column("id").to_pylist() == [1, 3]


def test_keep_stores_unknown_fields_as_json_in_extra() -> None:
    odd = {"id": 2, "a/b": [1, {"c": None}], "~t": "x", "": 0, 'q"k': True}
    for batch in (_ndjson(b'{"id": 1}', json.dumps(odd).encode(), unknown_fields="keep"),
                  _array(json.dumps([{"id": 1}, odd]).encode(), "keep")):
        assert batch.rejected == []
        assert batch.table.schema == arrow_schema(FIELDS, "keep")
        extra = batch.table.column(EXTRA).to_pylist()
        assert extra[0] is None
        assert json.loads(extra[1]) == {k: v for k, v in odd.items() if k != "id"}
    fast = _ndjson(b'{"id": 1}', b'{"id": 2}', unknown_fields="keep")
    assert fast.table.column(EXTRA).to_pylist() == [None, None]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed drop, reject, keep"):
        _ndjson(b'{"id": 1}', unknown_fields="ignore")


def test_keep_puts_extra_in_the_buffer_schema_only_with_a_schema() -> None:
    assert EXTRA in arrow_schema(FIELDS, "keep").names
    assert EXTRA not in arrow_schema(FIELDS, "drop").names
    assert arrow_schema(None, "keep") == arrow_schema(None)
    assert arrow_schema(FIELDS, "keep").field(EXTRA).type == pa.string()


# -- what pyarrow's reader must never see ------------------------------------------


@pytest.mark.parametrize("body", [b"null", b"null\n{\"id\": 1}", b"  null\n{\"id\": 1}",
                                  b"{\"id\": 1}\nnull", b"{\"id\": 1} {\"id\": 2}\n{\"id\": 3}"])
def test_lines_that_are_not_one_object_never_reach_pyarrow(body: bytes) -> None:
    # A body starting with null crashed the process inside pyarrow's JSON reader;
    # a line null was read as an empty record; two objects on a line shifted indices.
    batch = decode_json_lines(body, FIELDS, None, now=NOW, max_record_bytes=LIMIT)
    lines = [line for line in body.split(b"\n") if line.strip()]
    good = [i for i, line in enumerate(lines) if line.strip() == b'{"id": 1}'
            or line == b'{"id": 3}']
    assert sorted(_codes(batch)) == [i for i in range(len(lines)) if i not in good]
    assert set(_codes(batch).values()) == {"parse_failure"}
    assert batch.table.num_rows == len(good)
