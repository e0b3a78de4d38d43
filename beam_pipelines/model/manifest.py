"""The manifest: which files an epoch wrote, the commit record of exactly-once.

One :class:`FileEntry` per file, from the moment the epoch's pipeline
names it until the store commits it. Its ``path`` is always relative to
the sink (``{partition}/part-….{ext}``, see :mod:`beam_pipelines.model.layout`);
its ``uri`` is where the file is, known once the epoch has checked it is
there (``located``). Every JSON shape of an entry is made here:

* the manifest file on disk (``write_manifest``/``read_manifest``): what an
  attempt named, so a failed attempt's files can be found and removed;
* the reply and event shape (``public_file``): ``path`` there is the full
  location, as ``get``, ``stop`` and ``pipeline.written`` have always shown it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from beam_pipelines.model.times import iso

__all__ = ["FileEntry", "public_file", "read_manifest", "write_manifest"]


@dataclass(frozen=True)
class FileEntry:
    """One file of an epoch: where it lies in the sink, how many rows, which event times."""

    path: str  # relative to the sink root
    partition: str
    rows: int
    min_event_time: float | None = None  # unix seconds
    max_event_time: float | None = None
    uri: str = ""  # the sink root joined with ``path``; "" until located
    bytes: int = 0

    def located(self, uri: str, size: int) -> FileEntry:
        """This entry once its file was found at ``uri``, ``size`` bytes long."""
        return replace(self, uri=uri, bytes=size)

    def public(self) -> dict[str, Any]:
        """The shape of ``pipeline.written`` (without its pipeline and epoch)."""
        return public_file(self.uri, self.rows, self.bytes, self.min_event_time,
                           self.max_event_time)

    def to_manifest(self) -> dict[str, Any]:
        return {"partition": self.partition, "path": self.path, "rows": self.rows,
                "min_event_time": self.min_event_time, "max_event_time": self.max_event_time}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> FileEntry:
        return cls(path=data["path"], partition=data["partition"], rows=data["rows"],
                   min_event_time=data.get("min_event_time"),
                   max_event_time=data.get("max_event_time"))


def public_file(uri: str, rows: int, size: int, min_event_time: float | None,
                max_event_time: float | None, *, epoch: int | None = None) -> dict[str, Any]:
    """A committed file as replies and webhooks show it: ``path`` is its full location."""
    out: dict[str, Any] = {"path": uri, "rows": rows, "bytes": size}
    if epoch is not None:
        out["epoch"] = epoch
    out["min_event_time"] = iso(min_event_time)
    out["max_event_time"] = iso(max_event_time)
    return out


def write_manifest(path: str, entries: Iterable[FileEntry]) -> None:
    with open(path, "w") as fh:
        json.dump([entry.to_manifest() for entry in entries], fh)


def read_manifest(path: str) -> list[FileEntry]:
    """The entries of a manifest file; OSError or ValueError if it is missing or torn."""
    with open(path) as fh:
        data = json.load(fh)
    try:
        return [FileEntry.from_manifest(item) for item in data]
    except (KeyError, TypeError) as err:
        raise ValueError(f"manifest {path} is not a list of file entries: {err}") from None
