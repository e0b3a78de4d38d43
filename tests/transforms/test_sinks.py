"""File formats: every format and compression writes rows that read back unchanged."""

from __future__ import annotations

import gzip
import io
import json
import math
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from transforms.formats import FILE_FORMATS
from transforms.sinks import check_format, dictionary_columns, file_extension, make_sink

UTC = timezone.utc
COMBINATIONS = [(name, compression) for name, file_format in FILE_FORMATS.items()
                for compression in file_format.compressions]


def _events(first: int, count: int) -> pa.Table:
    strings = ["plain", 'quote " and, comma', "line\nbreak\r\nand\ttab", "", None, "ünïcødé ✓",
               "{\"looks\": \"json\"}", "back\\slash"]
    floats = [1.5, -0.25, float("nan"), float("inf"), None, 1e300, 0.0, 3.0]
    ids = range(first, first + count)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "text": [strings[i % len(strings)] for i in ids],
        "amount": [floats[i % len(floats)] for i in ids],
        "flag": [None if i % 5 == 0 else i % 2 == 0 for i in ids],
        "day": pa.array([date(2026, 1, 1 + i % 28) for i in ids], pa.date32()),
        "attrs": pa.array([None if i % 4 == 0 else {"k": i, "tags": ["a", str(i)]} for i in ids]),
        "_event_time": pa.array([datetime(2026, 3, 1, 12, 0, i % 60, 123456 * (i % 3), tzinfo=UTC)
                                 for i in ids], pa.timestamp("us", tz="UTC")),
    })


def _write(format_name: str, compression: str, tables: list[Any]) -> bytes:
    out = io.BytesIO()
    sink = make_sink(format_name, compression)
    sink.open(out)
    for table in tables:
        sink.write(table)
    sink.flush()
    assert not out.closed  # Beam closes its own handle after flush
    return out.getvalue()


def _read_back(path: Path, format_name: str) -> list[dict[str, Any]]:
    reader = {"parquet": f"read_parquet('{path}')",
              "jsonl": f"read_json('{path}', format='newline_delimited')",
              # null is an empty field, the empty string "": tell DuckDB so
              "csv": f"read_csv('{path}', header=true, allow_quoted_nulls=false)"}[format_name]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.sql(f"SELECT * FROM {reader} ORDER BY id").to_arrow_table().to_pylist()


def _expected(row: dict[str, Any], format_name: str) -> dict[str, Any]:
    """What a format promises to keep of a row."""
    out = dict(row)
    amount = out["amount"]
    if format_name == "jsonl" and amount is not None and not math.isfinite(amount):
        out["amount"] = None  # JSON has no NaN or infinity
    if format_name == "csv" and out["attrs"] is not None:
        out["attrs"] = json.dumps(out["attrs"], separators=(",", ":"))  # nested as JSON text
    return out


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float) and math.isnan(want):
        return math.isnan(got)
    if isinstance(want, datetime):
        return isinstance(got, datetime) and got.astimezone(UTC) == want
    return bool(got == want)


@pytest.mark.parametrize("format_name,compression", COMBINATIONS,
                         ids=[f"{f}-{c}" for f, c in COMBINATIONS])
def test_every_row_reads_back(format_name: str, compression: str, tmp_path: Path) -> None:
    first, second = _events(0, 700), _events(700, 300)
    data = _write(format_name, compression, [("dt=2026-03-01", first), second])
    extension = file_extension(format_name, compression)
    path = tmp_path / f"part-0000000001-00000.{extension}"
    path.write_bytes(data)
    if extension.endswith(".gz"):
        assert data[:2] == b"\x1f\x8b"
        gzip.decompress(data)  # one complete gzip stream, trailer included

    got = _read_back(path, format_name)
    want = [_expected(row, format_name) for row in pa.concat_tables([first, second]).to_pylist()]
    assert len(got) == len(want) == 1000
    assert [list(row) for row in got[:1]] == [list(want[0])]  # same columns, same order
    for got_row, want_row in zip(got, want):
        bad = {k: (got_row[k], v) for k, v in want_row.items() if not _same(got_row[k], v)}
        assert not bad, (want_row["id"], bad)


def test_text_formats_write_the_same_bytes_again() -> None:
    table = _events(0, 200)
    for format_name in ("jsonl", "csv"):
        for compression in ("gzip", "none"):
            assert _write(format_name, compression, [table]) == \
                _write(format_name, compression, [table]), (format_name, compression)


def test_csv_has_one_header_and_rfc3339_times() -> None:
    table = _events(0, 3).select(["id", "text", "_event_time"])
    text = _write("csv", "none", [table, table]).decode()
    assert text.count('"id","text","_event_time"') == 1
    assert '"2026-03-01T12:00:00.000000Z"' in text


def test_jsonl_lines_are_objects_with_rfc3339_times_and_no_nan() -> None:
    lines = _write("jsonl", "none", [_events(0, 16)]).decode().split("\n")
    assert lines[-1] == "" and len(lines) == 17
    rows = [json.loads(line) for line in lines[:-1]]  # strict JSON: NaN would fail here
    assert rows[2]["amount"] is None and rows[3]["amount"] is None
    assert rows[1]["_event_time"] == "2026-03-01T12:00:01.123456Z"
    assert rows[1]["attrs"] == {"k": 1, "tags": ["a", "1"]}
    assert list(rows[0]) == ["id", "text", "amount", "flag", "day", "attrs", "_event_time"]


def test_an_empty_table_writes_a_readable_file() -> None:
    assert _write("jsonl", "none", [_events(0, 0)]) == b""
    assert _write("csv", "none", [_events(0, 0).select(["id"])]).decode().strip() == '"id"'


def test_extensions() -> None:
    assert {(f, c): file_extension(f, c) for f, c in COMBINATIONS} == {
        ("parquet", "zstd"): "parquet", ("parquet", "snappy"): "parquet",
        ("parquet", "gzip"): "parquet", ("parquet", "lz4"): "parquet",
        ("parquet", "none"): "parquet", ("jsonl", "gzip"): "jsonl.gz", ("jsonl", "none"): "jsonl",
        ("csv", "gzip"): "csv.gz", ("csv", "none"): "csv"}


def test_unknown_names_fail_with_the_allowed_list() -> None:
    with pytest.raises(ValueError, match=r"unknown format 'orc': allowed parquet, jsonl, csv"):
        make_sink("orc", "zstd")
    with pytest.raises(ValueError, match=r"unknown compression 'zstd' for jsonl: allowed gzip, "
                                         r"none"):
        check_format("jsonl", "zstd")
    with pytest.raises(ValueError, match="allowed zstd, snappy, gzip, lz4, none"):
        file_extension("parquet", "brotli")


def test_parquet_codec_and_row_group_size_are_applied(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = io.BytesIO()
    sink = make_sink("parquet", "snappy", row_group_size=100)
    sink.open(out)
    sink.write(_events(0, 250))
    sink.flush()
    meta = pq.ParquetFile(io.BytesIO(out.getvalue())).metadata
    assert meta.num_rows == 250 and meta.num_row_groups == 3
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_parquet_pieces_of_any_size_make_full_row_groups_and_the_same_file() -> None:
    """An epoch's rows reach the sink in pieces (its SQL result in chunks, split by
    partition): they are gathered into full row groups holding the rows the table
    written at once would, and the same pieces make the same bytes (a re-run epoch)."""
    import pyarrow.parquet as pq

    def write(pieces: list[pa.Table]) -> bytes:
        out = io.BytesIO()
        sink = make_sink("parquet", "zstd", row_group_size=64)
        sink.open(out)
        for piece in pieces:
            sink.write(piece)
        sink.flush()
        return out.getvalue()

    whole = _events(0, 250)
    pieces = [whole.slice(0, 30), whole.slice(30, 0), whole.slice(30, 50),
              whole.slice(80, 100), whole.slice(180, 70)]
    in_pieces, at_once = write(pieces), write([whole])
    meta = pq.ParquetFile(io.BytesIO(in_pieces)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [64, 64, 64, 58]
    def rows(data: bytes) -> list[dict[str, Any]]:  # NaN as text: NaN != NaN
        table = pq.read_table(io.BytesIO(data))
        index = table.schema.get_field_index("amount")
        return table.set_column(index, "amount",
                                table.column("amount").cast(pa.string())).to_pylist()

    assert rows(in_pieces) == rows(at_once)
    assert pq.read_table(io.BytesIO(in_pieces)).column("id").to_pylist() == list(range(250))
    assert write(pieces) == in_pieces
    empty = pq.read_table(io.BytesIO(write([whole.slice(0, 0)])))
    assert empty.num_rows == 0 and empty.schema.names == whole.schema.names


def test_parquet_dictionary_encodes_only_columns_with_few_distinct_values() -> None:
    import pyarrow.parquet as pq

    rows = 10_000
    table = pa.table({
        "country": pa.array(["DE", "FR", "US", None] * (rows // 4)),
        "session": pa.array([f"s{i:08d}" for i in range(rows)]),
        "amount": pa.array([i * 0.5 for i in range(rows)]),
    })
    assert dictionary_columns(table) == ["country"]
    out = io.BytesIO()
    sink = make_sink("parquet", "zstd")
    sink.open(out)
    sink.write(table)
    sink.flush()
    group = pq.ParquetFile(io.BytesIO(out.getvalue())).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings
                 for i in range(group.num_columns)}
    assert "RLE_DICTIONARY" in encodings["country"]
    assert "RLE_DICTIONARY" not in encodings["session"]
    assert "RLE_DICTIONARY" not in encodings["amount"]
    assert pq.read_table(io.BytesIO(out.getvalue())).equals(table)
