"""File formats for ``fileio.WriteToFiles``: one sink, any filesystem.

A format is a ``fileio.FileSink`` that takes Arrow tables as records. The
path's scheme (local, gs://, s3://) picks Beam's filesystem, so local, GCS
and S3 are one sink each, not three. The registry is a literal dict and an
unknown name fails with the allowed list.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio

__all__ = ["FORMATS", "ParquetSink", "file_extension", "make_sink"]


class ParquetSink(fileio.FileSink):
    """Writes every Arrow table it is given into one Parquet file."""

    file_extension = "parquet"

    def __init__(self, compression: str = "zstd", row_group_size: int = 1_000_000) -> None:
        self._compression = None if compression == "none" else compression
        self._row_group_size = row_group_size
        self._writer: pq.ParquetWriter | None = None
        self._fh: Any = None

    def open(self, fh: Any) -> None:
        self._fh = fh
        self._writer = None

    def write(self, record: Any) -> None:
        table: pa.Table = record[1] if isinstance(record, tuple) else record
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._fh, table.schema, compression=self._compression)
        self._writer.write_table(table, row_group_size=self._row_group_size)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


FORMATS: dict[str, type[fileio.FileSink]] = {"parquet": ParquetSink}


def make_sink(format_name: str, compression: str) -> fileio.FileSink:
    try:
        sink_class = FORMATS[format_name]
    except KeyError:
        raise ValueError(f"unknown format {format_name!r}: allowed "
                         + ", ".join(FORMATS)) from None
    return sink_class(compression=compression)  # type: ignore[call-arg]


def file_extension(format_name: str, compression: str) -> str:
    extension = FORMATS[format_name].file_extension  # type: ignore[attr-defined]
    return str(extension)
