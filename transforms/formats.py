"""The file formats a sink can write: names, compressions, file extensions.

Pure data, the one registry of them: the definition model validates a
sink's ``format`` and ``compression`` here, and ``transforms.sinks`` picks
the writer for the same names. Nothing here imports Beam or pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FILE_FORMATS", "FileFormat", "file_extension", "file_format"]


@dataclass(frozen=True)
class FileFormat:
    """One format: what it may be compressed with, and what its files are called."""

    name: str
    compressions: tuple[str, ...]
    default_compression: str
    base_extension: str
    # Parquet compresses column chunks inside the file: its name stays ``.parquet``.
    compressed_inside: bool = False

    def check_compression(self, compression: Any) -> str:
        """``compression`` if this format allows it; ValueError naming what it allows otherwise."""
        if compression not in self.compressions:
            raise ValueError(f"unknown compression {compression!r} for {self.name}: allowed "
                             + ", ".join(self.compressions))
        return str(compression)

    def extension(self, compression: str | None = None) -> str:
        """``parquet``, ``jsonl`` / ``jsonl.gz``, ``csv`` / ``csv.gz``."""
        compression = compression or self.default_compression
        if self.compressed_inside or compression == "none":
            return self.base_extension
        return f"{self.base_extension}.gz"  # gzip: the one stream compression allowed


FILE_FORMATS: dict[str, FileFormat] = {
    "parquet": FileFormat("parquet", ("zstd", "snappy", "gzip", "lz4", "none"), "zstd",
                          "parquet", compressed_inside=True),
    "jsonl": FileFormat("jsonl", ("gzip", "none"), "gzip", "jsonl"),
    "csv": FileFormat("csv", ("gzip", "none"), "gzip", "csv"),
}


def file_format(name: Any, compression: Any = None) -> FileFormat:
    """The format called ``name``; ValueError naming what is allowed otherwise.

    ``compression`` (when given) must be one of the format's compressions.
    """
    if not isinstance(name, str) or name not in FILE_FORMATS:
        raise ValueError(f"unknown format {name!r}: allowed " + ", ".join(FILE_FORMATS))
    found = FILE_FORMATS[name]
    if compression is not None:
        found.check_compression(compression)
    return found


def file_extension(name: str, compression: str | None = None) -> str:
    """The extension of the format's files with this compression (default: the format's)."""
    return file_format(name, compression).extension(compression)
