"""Decoding requests into Arrow: the fast path and the record-by-record verdict agree."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from beam_pipelines.model.definition import Field
from transforms.decode import decode_json_lines, decode_objects

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
FIELDS = (Field("user_id", "int64", True), Field("name", "string"), Field("score", "float64"),
          Field("ok", "bool"), Field("ts", "timestamp"), Field("day", "date"),
          Field("extra", "json"))


def _lines(*records: object) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in records)


def _both(records: list[object], **kwargs: object):  # type: ignore[no-untyped-def]
    """Decode the same records as NDJSON and as parsed objects."""
    lines = decode_json_lines(_lines(*records), FIELDS, "ts", now=NOW, max_record_bytes=4096)
    objects = decode_objects([r if not isinstance(r, bytes) else "raw" for r in records], FIELDS,
                             "ts", now=NOW, max_record_bytes=4096, body_bytes=10)
    return lines, objects


def test_well_formed_events_become_typed_columns() -> None:
    good = {"user_id": 1, "name": "a", "score": 2, "ok": True, "ts": "2026-01-02T03:04:05Z",
            "day": "2026-01-02", "extra": {"k": [1, 2]}}
    for batch in _both([good, {**good, "user_id": 2, "ts": 1767323045000}]):
        assert batch.rejected == []
        rows = batch.table.to_pylist()
        assert [r["user_id"] for r in rows] == [1, 2]
        assert rows[0]["score"] == 2.0
        assert rows[0]["ts"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        assert rows[1]["ts"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        assert rows[0]["_event_time"] == rows[0]["ts"]
        assert rows[0]["_ingested_at"] == NOW
        assert json.loads(rows[0]["extra"]) == {"k": [1, 2]}
        assert str(rows[0]["day"]) == "2026-01-02"


def test_each_bad_record_is_reported_with_index_and_code_and_the_rest_kept() -> None:
    records = [
        {"user_id": 1, "ts": "2026-01-01T00:00:00Z"},
        {"user_id": "one"},                               # type_mismatch
        {"name": "no id"},                                # missing_field
        {"user_id": None},                                # missing_field (null)
        {"user_id": 2.5},                                 # type_mismatch: not an integer
        {"user_id": 3, "ts": "not a time"},               # type_mismatch
        {"user_id": 4, "ok": "yes"},                      # type_mismatch
        {"user_id": 5, "ts": "2026-01-01 10:00:00"},      # no offset: taken as UTC
        {"user_id": 6.0},                                 # 6.0 is the integer 6
    ]
    lines, objects = _both(records)
    for batch in (lines, objects):
        codes = {r.index: r.code for r in batch.rejected}
        assert codes == {1: "type_mismatch", 2: "missing_field", 3: "missing_field",
                         4: "type_mismatch", 5: "type_mismatch", 6: "type_mismatch"}
        assert batch.table.column("user_id").to_pylist() == [1, 5, 6]
        assert batch.table.column("ts").to_pylist()[1] == datetime(2026, 1, 1, 10,
                                                                   tzinfo=timezone.utc)
        messages = {r.index: r.message for r in batch.rejected}
        assert "user_id" in messages[1] and "int64" in messages[1]
        assert "user_id" in messages[2]


def test_broken_json_lines_are_parse_failures_and_oversized_records_too_large() -> None:
    body = _lines({"user_id": 1}, b'{"user_id": 2', b"[1, 2]", b"", b"   ",
                  {"user_id": 3, "name": "x" * 5000}, {"user_id": 4})
    batch = decode_json_lines(body, FIELDS, None, now=NOW, max_record_bytes=4096)
    assert {r.index: r.code for r in batch.rejected} == {1: "parse_failure", 2: "parse_failure",
                                                         3: "too_large"}
    assert batch.table.column("user_id").to_pylist() == [1, 4]
    # Events without an event-time field take the ingest time.
    assert batch.table.column("_event_time").to_pylist() == [NOW, NOW]
    assert batch.rejected[0].record == '{"user_id": 2'


def test_unstructured_events_are_kept_whole_as_json() -> None:
    body = _lines({"a": 1, "b": {"c": "d"}}, b"not json", {"z": None})
    batch = decode_json_lines(body, None, None, now=NOW, max_record_bytes=4096)
    assert [r.index for r in batch.rejected] == [1]
    assert [json.loads(v) for v in batch.table.column("value").to_pylist()] == \
        [{"a": 1, "b": {"c": "d"}}, {"z": None}]
    objects = decode_objects([{"a": 1}, 5, {"b": [1]}], None, None, now=NOW,
                             max_record_bytes=4096, body_bytes=10)
    assert [(r.index, r.code) for r in objects.rejected] == [(1, "parse_failure")]
    assert [json.loads(v) for v in objects.table.column("value").to_pylist()] == \
        [{"a": 1}, {"b": [1]}]


@pytest.mark.parametrize("count", [1, 1000])
def test_a_batch_with_no_good_record_yields_an_empty_table(count: int) -> None:
    batch = decode_json_lines(b"\n".join([b"{}"] * count), FIELDS, None, now=NOW,
                              max_record_bytes=4096)
    assert batch.table.num_rows == 0
    assert len(batch.rejected) == count
    assert {r.code for r in batch.rejected} == {"missing_field"}
