"""Apache Iceberg tables for sinks: each epoch's Parquet files, one append snapshot.

A sink with ``table: {catalog_uri, namespace, name}`` registers every
epoch's files in an Iceberg table of a pyiceberg SQL catalog (any SQLAlchemy
URL; default SQLite ``<data dir>/iceberg.sqlite``, catalog name
``pipeline_do``). The table is created on the first epoch with rows, from
the schema of its Parquet files (the SQL's output schema), at the sink's
location: data files stay where the epoch wrote them, metadata goes to
``<sink>/metadata/``. Columns a new SQL version adds are added to the table
(``union_by_name``); the table is unpartitioned (the Hive directories stay
in the file paths).

Exactly once, together with the store
-------------------------------------
The append is one snapshot whose summary records ``pipeline-do.pipeline-id``
and ``pipeline-do.epoch``. It is made after the epoch's files are written and
checked, and *before* the store commits the epoch (``epochs.run_epoch``).
A re-run of an epoch that is still uncommitted in the store first looks for
its snapshot: if the append happened (a crash or a failed store commit came
after it), the epoch adopts that snapshot's files instead of running again
and goes straight to the store commit. So:

* the table never holds an epoch twice, and never an epoch the store will
  not commit (the store's commit of a planned epoch is only ever delayed);
* files a snapshot references are never rewritten: a re-run could write the
  same rows in another order, with another size than the table recorded;
* an Iceberg failure is an epoch failure like a storage one: retried with
  backoff, logged, ``pipeline.failed``; no second catch-up mechanism.

Committing to Iceberg after the store instead would need a separate queue
of committed-but-unpublished epochs to retry outside the epoch loop.

Files are read and written through Beam's filesystems (:class:`BeamFileIO`)
with the sink's own options, so gs:// and s3:// sinks need no second set of
credentials. pyiceberg is an optional dependency: ``pip install
'pipeline-do[iceberg]'``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from beam_pipelines.model.definition import Sink
from beam_pipelines.model.layout import is_local
from beam_pipelines.model.manifest import FileEntry
from beam_pipelines.model.sink import ICEBERG_INSTALL, check_table_spec
from beam_pipelines.storage.files import filesystem_for
from beam_pipelines.storage.process import protect_secrets
from beam_pipelines.storage.redaction import url_password
from beam_pipelines.storage.settings import beam_path, sink_scheme

__all__ = ["CATALOG_NAME", "DEFAULT_NAMESPACE", "EPOCH_PROPERTY", "PIPELINE_PROPERTY",
           "BeamFileIO", "EpochTable", "TableSpec", "default_catalog_uri"]

CATALOG_NAME = "pipeline_do"
DEFAULT_NAMESPACE = "default"
EPOCH_PROPERTY = "pipeline-do.epoch"
PIPELINE_PROPERTY = "pipeline-do.pipeline-id"
_SINK_OPTIONS_PROPERTY = "pipeline-do.sink-options"
_EVENT_TIME = "_event_time"


@dataclass(frozen=True)
class TableSpec:
    """Where a sink's Iceberg table lives."""

    catalog_uri: str
    namespace: tuple[str, ...]
    name: str

    @classmethod
    def from_sink(cls, sink: Sink, data_dir: str) -> TableSpec:
        table = check_table_spec(sink.table)
        catalog_uri = table.get("catalog_uri") or default_catalog_uri(data_dir)
        namespace = tuple((table.get("namespace") or DEFAULT_NAMESPACE).split("."))
        return cls(catalog_uri, namespace, table["name"])

    @property
    def identifier(self) -> tuple[str, ...]:
        return (*self.namespace, self.name)


def default_catalog_uri(data_dir: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(data_dir), "iceberg.sqlite")


def _location(uri: str) -> str:
    """Iceberg wants URIs: local sinks are plain absolute paths here."""
    return "file://" + uri if is_local(uri) else uri


# -- the table of one pipeline's sink -------------------------------------------

_catalogs: dict[str, Any] = {}
_catalogs_lock = threading.Lock()


def _catalog(spec: TableSpec, sink: Sink) -> Any:
    """A pyiceberg SQL catalog whose FileIO writes with the sink's settings."""
    key = json.dumps([spec.catalog_uri, sink.uri, sink.options], sort_keys=True)
    with _catalogs_lock:
        catalog = _catalogs.get(key)
        if catalog is None:
            try:
                from pyiceberg.catalog.sql import SqlCatalog
            except ImportError:
                raise RuntimeError(f"sink.table needs pyiceberg: {ICEBERG_INSTALL}") from None
            catalog = SqlCatalog(CATALOG_NAME, **{
                "uri": spec.catalog_uri,
                "warehouse": _location(sink.uri),
                "py-io-impl": f"{__name__}.BeamFileIO",
                _SINK_OPTIONS_PROPERTY: json.dumps(sink.options),
            })
            _catalogs[key] = catalog
        return catalog


class EpochTable:
    """The Iceberg side of one epoch run (see the module docstring)."""

    def __init__(self, sink: Sink, data_dir: str, pipeline_id: str) -> None:
        self.sink = sink
        self.spec = TableSpec.from_sink(sink, data_dir)
        self.pipeline_id = pipeline_id
        _protect_catalog_password(self.spec.catalog_uri)
        self._catalog = _catalog(self.spec, sink)

    def _load(self) -> Any:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self._catalog.load_table(self.spec.identifier)
        except NoSuchTableError:
            return None

    def _snapshot_of(self, table: Any, epoch: int) -> Any:
        for snapshot in table.metadata.snapshots:
            summary = snapshot.summary
            if (summary is not None and summary[PIPELINE_PROPERTY] == self.pipeline_id
                    and summary[EPOCH_PROPERTY] == str(epoch)):
                return snapshot
        return None

    def appended_files(self, epoch: int) -> list[FileEntry] | None:
        """The manifest entries of the epoch's snapshot, or None if it was not appended."""
        table = self._load()
        snapshot = None if table is None else self._snapshot_of(table, epoch)
        if snapshot is None:
            return None
        from pyiceberg.conversions import from_bytes
        from pyiceberg.manifest import ManifestEntryStatus

        schema = table.schema()
        time_field = schema.find_field(_EVENT_TIME) if _EVENT_TIME in schema.column_names else None
        prefix = _location(self.sink.uri).rstrip("/") + "/"
        entries = []
        for manifest in snapshot.manifests(table.io):
            if manifest.added_snapshot_id != snapshot.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.status != ManifestEntryStatus.ADDED:
                    continue
                data_file = entry.data_file
                path = data_file.file_path
                if not path.startswith(prefix):
                    raise RuntimeError(f"epoch {epoch}'s Iceberg snapshot holds {path}, "
                                       f"outside the sink {self.sink.uri}")
                relative = path[len(prefix):]
                bounds: list[float | None] = [None, None]  # min, max event time
                if time_field is not None:
                    for i, values in enumerate((data_file.lower_bounds, data_file.upper_bounds)):
                        raw = (values or {}).get(time_field.field_id)
                        micros = None if raw is None else from_bytes(time_field.field_type, raw)
                        if isinstance(micros, int):
                            bounds[i] = micros / 1e6
                entries.append(FileEntry(path=relative, partition=os.path.dirname(relative),
                                         rows=data_file.record_count,
                                         min_event_time=bounds[0], max_event_time=bounds[1]))
        return sorted(entries, key=lambda e: e.path)

    def append(self, epoch: int, files: list[FileEntry]) -> None:
        """Append the epoch's files as one snapshot, unless it is there already."""
        if not files:
            return  # the SQL kept no row: nothing to register
        paths = [_location(f.uri) for f in files]
        table = self._load()
        if table is None:
            table = self._create(paths[0])
        elif self._snapshot_of(table, epoch) is not None:
            return
        file_schema = _parquet_schema(table.io, paths[0])
        with table.transaction() as tx:
            new_columns = set(file_schema.names) - set(tx.table_metadata.schema().column_names)
            if new_columns:
                with tx.update_schema() as update:
                    update.union_by_name(file_schema)
            tx.add_files(paths, snapshot_properties={PIPELINE_PROPERTY: self.pipeline_id,
                                                     EPOCH_PROPERTY: str(epoch)},
                         check_duplicate_files=False)

    def _create(self, first_file: str) -> Any:
        from pyiceberg.exceptions import TableAlreadyExistsError

        self._catalog.create_namespace_if_not_exists(self.spec.namespace)
        schema = _parquet_schema(BeamFileIO(self._catalog.properties), first_file)
        try:
            return self._catalog.create_table(self.spec.identifier, schema=schema,
                                              location=_location(self.sink.uri))
        except TableAlreadyExistsError:  # another pipeline made it first
            return self._catalog.load_table(self.spec.identifier)


def _protect_catalog_password(catalog_uri: str) -> None:
    password = url_password(catalog_uri)
    if password:
        protect_secrets([password])


def _parquet_schema(io: Any, path: str) -> Any:
    import pyarrow.parquet as pq

    with io.new_input(path).open() as stream:
        return pq.read_schema(stream)


# -- FileIO over Beam's filesystems ----------------------------------------------

def _file_io_base() -> Any:
    try:
        from pyiceberg.io import FileIO
    except ImportError:  # pragma: no cover - without the extra, no catalog loads us
        return object
    return FileIO


class _PositionedWriter:
    """A Beam write handle that knows its position (pyiceberg asks for ``tell``)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._position = 0

    def write(self, data: bytes) -> int:
        self._handle.write(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _PositionedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BeamFile:
    """pyiceberg ``InputFile`` and ``OutputFile`` over one Beam filesystem path."""

    def __init__(self, location: str, filesystem: Any, path: str) -> None:
        self._location = location
        self._fs = filesystem
        self._path = path

    @property
    def location(self) -> str:
        return self._location

    def __len__(self) -> int:
        return int(self._fs.size(self._path))

    def exists(self) -> bool:
        return bool(self._fs.exists(self._path))

    def open(self, seekable: bool = True) -> Any:
        from apache_beam.io.filesystem import CompressionTypes

        try:
            return self._fs.open(self._path, compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as err:
            if not self.exists():
                raise FileNotFoundError(self._location) from err
            raise

    def create(self, overwrite: bool = False) -> _PositionedWriter:
        from apache_beam.io.filesystem import CompressionTypes

        if not overwrite and self.exists():
            raise FileExistsError(self._location)
        return _PositionedWriter(self._fs.create(
            self._path, compression_type=CompressionTypes.UNCOMPRESSED))

    def to_input_file(self) -> _BeamFile:
        return self


class BeamFileIO(_file_io_base()):  # type: ignore[misc]
    """pyiceberg ``FileIO`` through Beam's file://, gs:// and s3:// filesystems.

    The catalog passes the sink's options (property
    ``pipeline-do.sink-options``); :func:`beam_pipelines.storage.files.filesystem_for`
    applies them exactly as for the epoch's own writes.
    """

    def __init__(self, properties: Mapping[str, str] | None = None) -> None:
        super().__init__(dict(properties or {}))
        self._options = json.loads(self.properties.get(_SINK_OPTIONS_PROPERTY) or "{}")
        self._filesystems: dict[str, Any] = {}

    def _file(self, location: Any) -> _BeamFile:
        location = location if isinstance(location, str) else location.location
        uri = _location(location)
        scheme = sink_scheme(uri)
        filesystem = self._filesystems.get(scheme)
        if filesystem is None:
            filesystem = filesystem_for(uri, self._options if scheme != "file" else None)
            self._filesystems[scheme] = filesystem
        return _BeamFile(location, filesystem, beam_path(uri))

    def new_input(self, location: str) -> Any:
        return self._file(location)

    def new_output(self, location: str) -> Any:
        return self._file(location)

    def delete(self, location: Any) -> None:
        target = self._file(location)
        target._fs.delete([target._path])
