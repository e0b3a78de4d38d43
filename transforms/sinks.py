"""File formats for ``fileio.WriteToFiles``: one sink per format, any filesystem.

A format is a ``fileio.FileSink`` that takes Arrow tables as records (or
``(destination, table)`` pairs) and knows its compressions and file
extension. The path's scheme (local, gs://, s3://) picks Beam's filesystem,
so local, GCS and S3 are one sink each, not three. The registry is a literal
dict and an unknown name fails with the allowed list.

Every writer is vectorized: Parquet and CSV through pyarrow's writers, JSON
lines through DuckDB's ``to_json`` over the whole table; no Python code runs
per row. Compressed text files are gzip streams written with ``mtime=0`` and
no file name, so re-running an epoch writes the same bytes.
"""

from __future__ import annotations

import gzip
import threading
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from transforms.formats import FILE_FORMATS, FileFormat, file_format

__all__ = ["FORMATS", "ROW_GROUP_ROWS", "CsvSink", "JsonLinesSink", "ParquetSink", "check_format",
           "SinkFactory", "file_extension", "make_sink"]

_GZIP_LEVEL = 1  # ~3x faster than 6 for ~10% larger files of event data


class _TableSink(fileio.FileSink):
    """What every format shares: Arrow records, the file opened uncompressed."""

    file_format: ClassVar[FileFormat]  # from the registry in transforms.formats

    @classmethod
    def extension(cls, compression: str) -> str:
        return cls.file_format.extension(compression)

    def create_metadata(self, destination: str, full_file_name: str) -> fileio.FileMetadata:
        # The format compresses by itself; Beam must not guess from the name.
        return fileio.FileMetadata(mime_type="application/octet-stream",
                                   compression_type=CompressionTypes.UNCOMPRESSED)


def _table(record: Any) -> pa.Table:
    return record[1] if isinstance(record, tuple) else record


# Rows per Parquet row group. Files of the make bench workload were within
# 0.2% of the size of 1M-row groups from 64k rows up (benchmarks/README.md,
# "perf4"); DuckDB writes 122,880. What a writer holds before writing
# is at most one row group per open file.
ROW_GROUP_ROWS = 128 * 1024


class ParquetSink(_TableSink):
    """Writes every Arrow table it is given into one Parquet file.

    Tables may come in pieces of any size (an epoch's result in chunks, split
    by partition): they are gathered until a full row group, so the file's
    row groups have ``row_group_size`` rows (the last one fewer) whatever the
    pieces, and the same rows always make the same file.
    """

    file_format = FILE_FORMATS["parquet"]

    def __init__(self, compression: str = "zstd", row_group_size: int | None = None) -> None:
        self._compression = None if compression == "none" else compression
        self._row_group_size = row_group_size or ROW_GROUP_ROWS
        self._writer: pq.ParquetWriter | None = None
        self._fh: Any = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def open(self, fh: Any) -> None:
        self._fh = fh
        self._writer = None
        self._pending, self._pending_rows = [], 0

    def write(self, record: Any) -> None:
        table = _table(record)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self._row_group_size:
            self._write_groups(final=False)

    def flush(self) -> None:
        if self._pending:
            self._write_groups(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_groups(self, *, final: bool) -> None:
        """Write the whole row groups gathered (all rows when ``final``); keep the rest."""
        gathered = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        size = self._row_group_size
        whole = gathered.num_rows if final else gathered.num_rows - gathered.num_rows % size
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._fh, gathered.schema,
                                            compression=self._compression,
                                            use_dictionary=dictionary_columns(gathered))
        if whole or gathered.num_rows == 0:
            self._writer.write_table(gathered.slice(0, whole), row_group_size=size)
        rest = gathered.slice(whole)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows


# Dictionary encoding pays off for a column with few distinct values; for one
# of mostly unique values (ids, times, amounts) the writer builds a dictionary,
# outgrows it and falls back to plain encoding: the same file, ~30% more CPU.
_DICTIONARY_SAMPLE_ROWS = 20_000
_DICTIONARY_MAX_DISTINCT_RATIO = 0.25


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns worth dictionary-encoding, judged on the table's first rows.

    Deterministic in the table, so a re-run epoch writes the same bytes.
    """
    sample = table.slice(0, _DICTIONARY_SAMPLE_ROWS)
    if sample.num_rows == 0:
        return list(table.column_names)
    chosen = []
    for name, column in zip(sample.column_names, sample.columns):
        if pa.types.is_nested(column.type):
            continue
        distinct = pc.count_distinct(column, mode="all").as_py()
        if distinct <= _DICTIONARY_MAX_DISTINCT_RATIO * sample.num_rows:
            chosen.append(name)
    return chosen


class _TextSink(_TableSink):
    """A text format, optionally one gzip stream over the whole file."""

    def __init__(self, compression: str = "gzip") -> None:
        self._gzip = compression == "gzip"
        self._out: Any = None
        self._gzip_file: gzip.GzipFile | None = None

    def open(self, fh: Any) -> None:
        self._gzip_file = None
        self._out = fh
        if self._gzip:
            # filename="" and mtime=0: the same rows give the same bytes.
            self._gzip_file = gzip.GzipFile(filename="", mode="wb", fileobj=fh,
                                            compresslevel=_GZIP_LEVEL, mtime=0)
            self._out = self._gzip_file

    def _finish_stream(self) -> None:
        if self._gzip_file is not None:
            self._gzip_file.close()  # writes the trailer; leaves Beam's handle open
            self._gzip_file = None


class JsonLinesSink(_TextSink):
    """One JSON object per line (``\\n``), keys in column order.

    Timestamps become RFC 3339 text (``2026-03-01T12:00:00.000000Z``), dates
    ``YYYY-MM-DD``; NaN and infinities, which JSON cannot carry, become null.
    """

    file_format = FILE_FORMATS["jsonl"]

    def write(self, record: Any) -> None:
        table = _table(record)
        if table.num_rows == 0:
            return
        lines = _json_lines(table)
        for chunk in lines.chunks:
            self._out.write(_string_payload(chunk))

    def flush(self) -> None:
        self._finish_stream()


class CsvSink(_TextSink):
    """Comma-separated values with one header line, RFC 4180 quoting.

    Null is an empty field, the empty string ``""``; timestamps are RFC 3339
    text; nested values (struct, list, map) and binary are JSON text.
    """

    file_format = FILE_FORMATS["csv"]

    def __init__(self, compression: str = "gzip") -> None:
        super().__init__(compression)
        self._writer: pcsv.CSVWriter | None = None

    def open(self, fh: Any) -> None:
        super().open(fh)
        self._writer = None

    def write(self, record: Any) -> None:
        table = _csv_ready(_table(record))
        if self._writer is None:
            self._writer = pcsv.CSVWriter(self._out, table.schema,
                                          write_options=pcsv.WriteOptions(include_header=True))
        self._writer.write_table(table)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._finish_stream()


# One writer per name of the registry (transforms.formats).
FORMATS: dict[str, type[_TableSink]] = {
    "parquet": ParquetSink,
    "jsonl": JsonLinesSink,
    "csv": CsvSink,
}
assert set(FORMATS) == set(FILE_FORMATS)


def check_format(format_name: str, compression: str | None = None) -> type[_TableSink]:
    """The format's sink class; ValueError naming what is allowed otherwise."""
    return FORMATS[file_format(format_name, compression).name]


def make_sink(format_name: str, compression: str | None = None, **settings: Any) -> fileio.FileSink:
    """A new sink of the format; ``settings`` are format-specific (``row_group_size``)."""
    sink_class = check_format(format_name, compression)
    return sink_class(compression=compression  # type: ignore[call-arg]
                      or sink_class.file_format.default_compression, **settings)


class SinkFactory:
    """``WriteToFiles``' ``sink``: a new sink of the format for every file.

    Pass this, never a sink object: Beam re-creates a sink object's class
    without its arguments, and a shared one puts rows in the wrong window
    (Beam issue #20849). It is plain data, so it pickles.
    """

    def __init__(self, format_name: str, compression: str | None = None) -> None:
        check_format(format_name, compression)
        self._format = format_name
        self._compression = compression

    def __call__(self, destination: Any) -> fileio.FileSink:
        return make_sink(self._format, self._compression)


def file_extension(format_name: str, compression: str | None = None) -> str:
    """``parquet``, ``jsonl`` / ``jsonl.gz``, ``csv`` / ``csv.gz``."""
    return file_format(format_name, compression).extension(compression)


# -- vectorized conversions (one DuckDB query per table) ---------------------

_local = threading.local()


def _duckdb() -> Any:
    """One DuckDB connection per thread for the writers' fixed queries."""
    con = getattr(_local, "con", None)
    if con is None:
        import duckdb

        con = duckdb.connect(config={"threads": 1})
        _local.con = con
    return con


def _query(table: pa.Table, sql: str) -> pa.Table:
    """Run ``sql`` over ``table`` registered as ``_pdo_rows`` (columns ``c0, c1, ...``)."""
    renamed = pa.Table.from_arrays(
        [_naive_time(column, field.type) for column, field in zip(table.columns, table.schema)],
        names=[f"c{i}" for i in range(table.num_columns)])
    con = _duckdb()
    con.register("_pdo_rows", renamed)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("_pdo_rows")


def _naive_time(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    # Zoned timestamps hold UTC instants: dropping the zone keeps the instant and
    # lets DuckDB format it without a time zone library.
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        return column.cast(pa.timestamp(kind.unit))
    return column


def _text_expression(i: int, kind: pa.DataType, *, for_json: bool) -> str:
    """A DuckDB expression giving column ``c{i}`` in its text-file form."""
    column = f"c{i}"
    if pa.types.is_timestamp(kind):
        suffix = "Z" if kind.tz is not None else ""
        return f"strftime({column}, '%Y-%m-%dT%H:%M:%S.%f{suffix}')"
    if for_json and pa.types.is_floating(kind):
        return f"CASE WHEN isfinite({column}) THEN {column} END"  # JSON has no NaN
    if not for_json and _is_nested(kind):
        return f"to_json({column})"
    return column


def _is_nested(kind: pa.DataType) -> bool:
    return (pa.types.is_nested(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_lines(table: pa.Table) -> pa.ChunkedArray:
    """Each row as one JSON object followed by a newline."""
    columns = ", ".join(f"{_text_expression(i, field.type, for_json=True)} AS {_quote(field.name)}"
                        for i, field in enumerate(table.schema))
    lines = _query(table, f"SELECT to_json(q) FROM (SELECT {columns} FROM _pdo_rows) AS q")
    return pc.binary_join_element_wise(lines.column(0), "\n", "")


def _csv_ready(table: pa.Table) -> pa.Table:
    """Timestamps as RFC 3339 text, nested and binary values as JSON text."""
    kinds = table.schema.types
    if not any(pa.types.is_timestamp(k) or _is_nested(k) for k in kinds):
        return table
    columns = ", ".join(_text_expression(i, kind, for_json=False) for i, kind in enumerate(kinds))
    converted = _query(table, f"SELECT {columns} FROM _pdo_rows")
    return pa.Table.from_arrays(converted.columns, names=table.column_names)


def _string_payload(chunk: pa.Array) -> pa.Buffer:
    """The bytes of a null-free string array's values, back to back, zero-copy."""
    if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
        chunk = chunk.cast(pa.large_string())
    _validity, offsets_buffer, data = chunk.buffers()
    offset_type = pa.int64() if pa.types.is_large_string(chunk.type) else pa.int32()
    offsets = pa.Array.from_buffers(offset_type, len(chunk) + 1, [None, offsets_buffer],
                                    offset=chunk.offset)
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    return data.slice(start, end - start)
