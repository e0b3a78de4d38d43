"""Generated request bodies and the properties every decode must keep.

Shared by the bounded property tests (``test_decode_properties.py``) and
the time-budgeted fuzz run (``make fuzz``, ``fuzz/test_decode_fuzz.py``).

The properties, for any body:
- decoding never raises (a JSON array body may be refused whole with
  ``ValueError``, which the API answers as 400), and never crashes;
- every record is accepted or rejected exactly once, rejections with a
  documented code;
- the accepted rows match the buffer schema, hold only valid UTF-8, and
  survive a Parquet round trip read back by DuckDB.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hypothesis import strategies as st

from beam_pipelines.model.definition import Field
from transforms.decode import (
    REJECTION_CODES,
    DecodedBatch,
    arrow_schema,
    decode_json_lines,
    decode_objects,
)
from transforms.json_depth import load_json_events

__all__ = ["FIELDS", "check_batch", "json_array_bodies", "ndjson_bodies", "policies",
           "run_json_array", "run_json_lines", "schemas"]

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
FIELDS = (Field("id", "int64", True), Field("s", "string"), Field("f", "float64"),
          Field("b", "bool"), Field("ts", "timestamp"), Field("day", "date"),
          Field("j", "json"))
MAX_RECORD_BYTES = 4096

_numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, -(2**63), 2**63, 2**64, 253402300799999, 253402300800000,
                     -62135596800000, -62135596800001, 1e300, -1e300, 1.5, 0.0]),
    st.floats(allow_nan=False, allow_infinity=False))
_texts = st.one_of(st.text(max_size=20), st.sampled_from([
    "2026-01-02T03:04:05Z", "2026-01-02", "0000-01-01", "9999-12-31", "10000-01-01",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "-0001-01-01", "not a time", ""]))
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _texts)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
_keys = st.one_of(st.sampled_from([f.name for f in FIELDS]), st.text(max_size=6))
_records = st.dictionaries(_keys, _values, max_size=6)


def _deep(levels: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    inner = b'{"a":' * levels if opener == b"{" else b"[" * levels
    return inner + b"1" + closer * levels


@st.composite
def _lines(draw: Any) -> bytes:
    """One NDJSON line: usually a JSON object, sometimes something hostile."""
    kind = draw(st.sampled_from(["object", "object", "object", "bytes", "deep", "bad_utf8",
                                 "constant", "truncated", "blank", "scalar"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    if kind == "deep":
        levels = draw(st.integers(min_value=60, max_value=3000))
        return b'{"id": 1, "j": ' + _deep(levels, draw(st.sampled_from([b"[", b"{"]))) + b"}"
    if kind == "constant":
        return b'{"id": 1, "f": ' + draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity",
                                                          b"1e400", b"-1e999"])) + b"}"
    if kind == "blank":
        return draw(st.sampled_from([b"", b"  ", b"\t", b"\r"]))
    if kind == "scalar":
        return json.dumps(draw(_scalars)).encode()
    line = json.dumps(draw(_records)).encode()
    if kind == "bad_utf8":
        at = draw(st.integers(min_value=0, max_value=len(line)))
        junk = draw(st.binary(min_size=1, max_size=3).filter(lambda b: b[0] >= 0x80))
        return line[:at] + junk.replace(b"\n", b" ") + line[at:]
    if kind == "truncated":
        return line[:draw(st.integers(min_value=0, max_value=max(len(line) - 1, 0)))]
    return line


ndjson_bodies = st.lists(_lines(), min_size=0, max_size=12).map(b"\n".join)
policies = st.sampled_from(["drop", "reject", "keep"])
schemas = st.sampled_from([FIELDS, None])


@st.composite
def _json_array_body(draw: Any) -> bytes:
    elements = []
    for _ in range(draw(st.integers(min_value=0, max_value=10))):
        kind = draw(st.sampled_from(["object", "object", "deep", "scalar", "constant"]))
        if kind == "deep":
            levels = draw(st.integers(min_value=60, max_value=3000))
            elements.append(b'{"j": ' + _deep(levels, draw(st.sampled_from([b"[", b"{"])))
                            + b', "s": "a,]\\"["}')
        elif kind == "scalar":
            elements.append(json.dumps(draw(_scalars)).encode())
        elif kind == "constant":
            elements.append(b'{"id": 2, "f": ' + draw(st.sampled_from([b"NaN", b"Infinity"]))
                            + b"}")
        else:
            elements.append(json.dumps(draw(_records), ensure_ascii=draw(st.booleans()))
                            .encode())
    return b"[" + b", ".join(elements) + b"]"


json_array_bodies = _json_array_body()


def run_json_lines(body: bytes, fields: tuple[Field, ...] | None, policy: str) -> None:
    batch = decode_json_lines(body, fields, "ts" if fields else None, now=NOW,
                              max_record_bytes=MAX_RECORD_BYTES, unknown_fields=policy)
    # Blank as the decoder defines it: valid UTF-8 that Arrow trims to nothing.
    blank = [_utf8(line) and pc.equal(pc.utf8_trim_whitespace(pa.array([line.decode()])),
                                       "")[0].as_py() for line in body.split(b"\n")]
    check_batch(batch, blank.count(False), fields, policy)


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def run_json_array(body: bytes, fields: tuple[Field, ...] | None, policy: str) -> None:
    try:
        parsed = load_json_events(body)
    except ValueError:
        return  # the API answers 400 for the whole body
    batch = decode_objects(parsed.events, fields, "ts" if fields else None, now=NOW,
                           max_record_bytes=MAX_RECORD_BYTES, body_bytes=len(body),
                           unknown_fields=policy, too_deep=parsed.too_deep)
    check_batch(batch, len(parsed.events), fields, policy)


def check_batch(batch: DecodedBatch, records: int, fields: tuple[Field, ...] | None,
                policy: str) -> None:
    indices = [r.index for r in batch.rejected]
    assert len(set(indices)) == len(indices), "a record rejected twice"
    assert all(0 <= i < records for i in indices), (indices, records)
    assert batch.table.num_rows + len(indices) == records, (batch.table.num_rows, indices,
                                                             records)
    assert {r.code for r in batch.rejected} <= set(REJECTION_CODES)
    assert all(r.message for r in batch.rejected)
    if policy != "reject" or fields is None:
        assert "unknown_field" not in {r.code for r in batch.rejected}
    assert batch.table.schema == arrow_schema(fields, policy if fields else "drop")
    batch.table.validate(full=True)  # invalid UTF-8 in a string column raises
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "batch.parquet")
        pq.write_table(batch.table, path)
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            rows = con.execute("SELECT * FROM read_parquet(?)", [path]).fetchall()
    assert len(rows) == batch.table.num_rows
