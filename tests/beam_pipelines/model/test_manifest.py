"""The manifest's file entries: one type, and the JSON shapes made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beam_pipelines.model.manifest import FileEntry, public_file, read_manifest, write_manifest


def _entry() -> FileEntry:
    return FileEntry(path="dt=2026-03-01/part-0000000007-00000-pl_1.parquet",
                     partition="dt=2026-03-01", rows=3,
                     min_event_time=1772323200.0, max_event_time=1772323200.5)


def test_the_manifest_file_keeps_its_shape_and_reads_back_the_same_entries(tmp_path: Path) -> None:
    path = str(tmp_path / "m.json")
    write_manifest(path, [_entry()])
    assert json.loads(Path(path).read_text()) == [{
        "partition": "dt=2026-03-01", "path": "dt=2026-03-01/part-0000000007-00000-pl_1.parquet",
        "rows": 3, "min_event_time": 1772323200.0, "max_event_time": 1772323200.5}]
    assert read_manifest(path) == [_entry()]


def test_a_torn_or_foreign_manifest_is_a_value_error(tmp_path: Path) -> None:
    torn = tmp_path / "torn.json"
    torn.write_text('[{"partition": ')
    foreign = tmp_path / "foreign.json"
    foreign.write_text('[{"name": "x"}]')
    for path in (torn, foreign):
        with pytest.raises(ValueError):
            read_manifest(str(path))
    with pytest.raises(OSError):
        read_manifest(str(tmp_path / "missing.json"))


def test_replies_show_the_located_file_by_its_full_uri() -> None:
    located = _entry().located("gs://b/lake/dt=2026-03-01/part-0000000007-00000-pl_1.parquet", 42)
    assert located.path == _entry().path and located.bytes == 42
    assert located.public() == {
        "path": "gs://b/lake/dt=2026-03-01/part-0000000007-00000-pl_1.parquet", "rows": 3,
        "bytes": 42, "min_event_time": "2026-03-01T00:00:00.000Z",
        "max_event_time": "2026-03-01T00:00:00.500Z"}
    assert public_file("/lake/a.parquet", 1, 2, None, None, epoch=5) == {
        "path": "/lake/a.parquet", "rows": 1, "bytes": 2, "epoch": 5,
        "min_event_time": None, "max_event_time": None}
