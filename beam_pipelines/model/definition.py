"""The pipeline definition model: what a user declares, validated.

A definition is plain data (frozen dataclasses) parsed from the JSON the
API receives. It imports neither Flask nor Beam: the control API validates
with it, the compiler turns it into PTransforms, and both agree on one
meaning. Every error names the field and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from beam_pipelines.errors import DefinitionError
from beam_pipelines.model.layout import is_local
from beam_pipelines.model.redaction import hide_password
from beam_pipelines.model.sink import (
    SECRET_OPTIONS,
    SINK_OPTIONS,
    SINK_SCHEMES,
    check_table_spec,
    pyiceberg_missing,
)
from beam_pipelines.storage.roots import check_local_catalog, check_local_sink, local_sink_path
from transforms.formats import file_format

__all__ = [
    "FIELD_NAME_PATTERN",
    "FIELD_TYPES",
    "PIPELINE_NAME_PATTERN",
    "RUNNER_TYPES",
    "UNKNOWN_FIELD_POLICIES",
    "Field",
    "PipelineDefinition",
    "Retention",
    "Roll",
    "RunnerSpec",
    "Sink",
    "definition_from_dict",
    "parse_definition",
    "parse_schema",
]

FIELD_TYPES = ("string", "int64", "float64", "bool", "timestamp", "date", "json")
RUNNER_TYPES = ("direct", "dataflow", "flink")
DEFAULT_SQL = "SELECT * FROM events"
# What ingest does with an event's fields that the schema does not declare.
UNKNOWN_FIELD_POLICIES = ("drop", "reject", "keep")

# The API's OpenAPI document publishes these same patterns.
PIPELINE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
FIELD_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"

_NAME = re.compile(PIPELINE_NAME_PATTERN)
_FIELD_NAME = re.compile(FIELD_NAME_PATTERN)
_PARTITION_COLUMN = re.compile(r"\{([^{}]*)\}")
_MAX_SQL_CHARS = 100_000


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False


@dataclass(frozen=True)
class Roll:
    """When an epoch closes: the oldest event's age, or the backlog's size."""

    interval_seconds: float = 60.0
    max_bytes: int = 64 * 1024 * 1024
    max_events: int = 1_000_000


@dataclass(frozen=True)
class Sink:
    uri: str
    format: str = "parquet"
    compression: str = "zstd"
    partition_by: str | None = None
    roll: Roll = field(default_factory=Roll)
    options: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] | None = None

    @property
    def partition_columns(self) -> tuple[str, ...]:
        if not self.partition_by:
            return ()
        return tuple(_PARTITION_COLUMN.findall(self.partition_by))

    def public(self) -> dict[str, Any]:
        """The sink as replies show it: secrets are write-only."""
        out = asdict(self)
        out["options"] = {k: hide_password(v) for k, v in self.options.items()
                          if k not in SECRET_OPTIONS}
        if self.table and isinstance(self.table.get("catalog_uri"), str):
            out["table"] = {**self.table, "catalog_uri": hide_password(self.table["catalog_uri"])}
        return out


@dataclass(frozen=True)
class Retention:
    """How long committed events stay in the local buffer's log, for replay.

    Committed segments are deleted once older than ``seconds`` (by their
    newest event's ingest time) or once the committed ones together are over
    ``bytes``. Neither set: deleted as soon as committed.
    """

    seconds: float | None = None
    bytes: int | None = None

    @property
    def until_committed(self) -> bool:
        return self.seconds is None and self.bytes is None


@dataclass(frozen=True)
class RunnerSpec:
    type: str = "direct"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineDefinition:
    name: str
    sql: str = DEFAULT_SQL
    schema: tuple[Field, ...] | None = None
    event_time_field: str | None = None
    sink: Sink = field(default_factory=lambda: Sink(uri=""))
    runner: RunnerSpec = field(default_factory=RunnerSpec)
    unknown_fields: str = "drop"
    retention: Retention = field(default_factory=Retention)

    def with_sql(self, sql: Any) -> PipelineDefinition:
        return replace(self, sql=_parse_sql(sql))

    def to_dict(self) -> dict[str, Any]:
        """Everything, secrets included: for the store, never for replies."""
        return {
            "name": self.name,
            "sql": self.sql,
            "schema": None if self.schema is None else [asdict(f) for f in self.schema],
            "event_time_field": self.event_time_field,
            "sink": asdict(self.sink),
            "runner": asdict(self.runner),
            "unknown_fields": self.unknown_fields,
            "retention": asdict(self.retention),
        }

    def public(self) -> dict[str, Any]:
        out = self.to_dict()
        out["sink"] = self.sink.public()
        return out


def parse_definition(params: dict[str, Any], *, default_sink_uri: str,
                     local_sink_roots: Sequence[str]) -> PipelineDefinition:
    """Validate a ``create`` request's parameters into a definition.

    ``default_sink_uri`` is where files go when the sink names no ``uri``
    (``<data dir>/lake/<name>``); it may contain ``{name}``. A local sink
    must lie under one of ``local_sink_roots`` (see ``beam_pipelines.storage.roots``).
    """
    if not isinstance(params, dict):
        raise DefinitionError("parameters", "parameters must be an object")
    name = params.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("pl_"):
        raise DefinitionError(
            "name", "name must be 1-63 letters, digits, '_' or '-', start with a letter "
            "and not start with 'pl_'")
    schema = parse_schema(params.get("schema"))
    event_time_field = _parse_event_time_field(params.get("event_time_field"), schema)
    sink = _parse_sink(params.get("sink"), default_sink_uri.replace("{name}", name),
                       local_sink_roots)
    runner = _parse_runner(params.get("runner"))
    sql = _parse_sql(params.get("sql", DEFAULT_SQL))
    unknown_fields = _parse_unknown_fields(params.get("unknown_fields", "drop"), schema)
    retention = _parse_retention(params.get("retention"))
    return PipelineDefinition(name=name, sql=sql, schema=schema,
                              event_time_field=event_time_field, sink=sink, runner=runner,
                              unknown_fields=unknown_fields, retention=retention)


def definition_from_dict(data: dict[str, Any]) -> PipelineDefinition:
    """Rebuild a stored definition (the output of ``to_dict``) without re-validating."""
    sink = dict(data["sink"])
    sink["roll"] = Roll(**sink["roll"])
    schema = data.get("schema")
    return PipelineDefinition(
        name=data["name"],
        sql=data["sql"],
        schema=None if schema is None else tuple(Field(**f) for f in schema),
        event_time_field=data.get("event_time_field"),
        sink=Sink(**sink),
        runner=RunnerSpec(**data["runner"]),
        unknown_fields=data.get("unknown_fields", "drop"),
        retention=Retention(**(data.get("retention") or {})),
    )


_RETENTION_LIMITS = {"seconds": (0, 366 * 86_400), "bytes": (0, 2**50)}


def _parse_retention(raw: Any) -> Retention:
    if raw is None:
        return Retention()
    if not isinstance(raw, dict):
        raise DefinitionError("retention", "retention must be an object {seconds, bytes}; "
                              "leave it out to keep events until they are committed")
    unknown = set(raw) - set(_RETENTION_LIMITS)
    if unknown:
        raise DefinitionError("retention", f"unknown retention keys {sorted(unknown)}: allowed "
                              "seconds, bytes")
    values: dict[str, Any] = {}
    for key, (low, high) in _RETENTION_LIMITS.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high or (key == "bytes" and not float(value).is_integer()):
            kind = "a whole number" if key == "bytes" else "a number"
            raise DefinitionError(f"retention.{key}", f"retention.{key} must be {kind} from "
                                  f"{low} to {high}")
        values[key] = float(value) if key == "seconds" else int(value)
    return Retention(**values)


def _parse_unknown_fields(raw: Any, schema: tuple[Field, ...] | None) -> str:
    if raw not in UNKNOWN_FIELD_POLICIES or not isinstance(raw, str):
        raise DefinitionError("unknown_fields", f"unknown_fields {raw!r} is not allowed: allowed "
                              + ", ".join(UNKNOWN_FIELD_POLICIES))
    if raw != "drop" and schema is None:
        raise DefinitionError("unknown_fields", f"unknown_fields {raw!r} needs a schema: without "
                              "one every field is kept whole; allowed drop")
    return raw


def _parse_sql(sql: Any) -> str:
    if not isinstance(sql, str) or not sql.strip():
        raise DefinitionError("sql", "sql must be a non-empty string holding one SELECT")
    if len(sql) > _MAX_SQL_CHARS:
        raise DefinitionError("sql", f"sql is longer than {_MAX_SQL_CHARS} characters")
    return sql.strip()


def parse_schema(raw: Any) -> tuple[Field, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise DefinitionError("schema", "schema must be a non-empty array of "
                              "{name, type, required} objects, or absent")
    fields: list[Field] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"schema[{i}]"
        if not isinstance(item, dict):
            raise DefinitionError(where, "each schema entry must be an object {name, type, required}")
        unknown = set(item) - {"name", "type", "required"}
        if unknown:
            raise DefinitionError(where, f"unknown keys {sorted(unknown)}: allowed name, type, required")
        fname, ftype, required = item.get("name"), item.get("type"), item.get("required", False)
        if not isinstance(fname, str) or not _FIELD_NAME.match(fname):
            raise DefinitionError(f"{where}.name", "a field name is a letter followed by up to "
                                  "127 letters, digits or '_' (names starting with '_' are reserved)")
        if fname.lower() in seen:
            raise DefinitionError(f"{where}.name", f"duplicate field name '{fname}'")
        if ftype not in FIELD_TYPES:
            raise DefinitionError(f"{where}.type", f"unknown type {ftype!r}: allowed "
                                  + ", ".join(FIELD_TYPES))
        if not isinstance(required, bool):
            raise DefinitionError(f"{where}.required", "required must be true or false")
        seen.add(fname.lower())
        fields.append(Field(fname, ftype, required))
    return tuple(fields)


def _parse_event_time_field(raw: Any, schema: tuple[Field, ...] | None) -> str | None:
    if raw is None:
        return None
    if schema is None:
        raise DefinitionError("event_time_field", "event_time_field needs a schema that "
                              "declares it as a timestamp field")
    types = {f.name: f.type for f in schema}
    if not isinstance(raw, str) or raw not in types:
        raise DefinitionError("event_time_field", f"event_time_field {raw!r} is not a schema "
                              "field: allowed " + ", ".join(types))
    if types[raw] != "timestamp":
        raise DefinitionError("event_time_field", f"event_time_field {raw!r} has type "
                              f"{types[raw]}: it must be a timestamp field")
    return str(raw)


def _parse_sink(raw: Any, default_uri: str, local_roots: Sequence[str]) -> Sink:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DefinitionError("sink", "sink must be an object")
    allowed = {"uri", "format", "compression", "partition_by", "roll", "options", "table"}
    unknown = set(raw) - allowed
    if unknown:
        raise DefinitionError("sink", f"unknown sink keys {sorted(unknown)}: allowed "
                              + ", ".join(sorted(allowed)))
    uri = raw.get("uri") or default_uri
    if not isinstance(uri, str):
        raise DefinitionError("sink.uri", "sink.uri must be a string")
    uri = _normalize_uri(uri, local_roots)
    fmt = raw.get("format", "parquet")
    try:
        file_type = file_format(fmt)
    except ValueError as err:
        raise DefinitionError("sink.format", str(err)) from None
    compression = raw.get("compression", file_type.default_compression)
    try:
        file_type.check_compression(compression)  # null too: absent means the default, null not
    except ValueError as err:
        raise DefinitionError("sink.compression", str(err)) from None
    partition_by = raw.get("partition_by")
    if partition_by is not None:
        _check_partition_by(partition_by)
    options = raw.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise DefinitionError("sink.options", "sink.options must be an object of strings")
    unknown = set(options) - set(SINK_OPTIONS)
    if unknown:
        raise DefinitionError("sink.options", f"unknown options {sorted(unknown)}: allowed "
                              + ", ".join(SINK_OPTIONS))
    table = raw.get("table")
    if table is not None:
        _check_table(table, fmt)
        check_local_catalog(table.get("catalog_uri"), local_roots)
    return Sink(uri=uri, format=fmt, compression=compression, partition_by=partition_by,
                roll=_parse_roll(raw.get("roll")), options=dict(options), table=table)


def _check_table(table: Any, fmt: str) -> None:
    try:
        check_table_spec(table)
    except ValueError as err:
        raise DefinitionError("sink.table", str(err)) from None
    if fmt != "parquet":
        raise DefinitionError("sink.table", f"an Iceberg table needs format parquet, not {fmt!r}")
    missing = pyiceberg_missing()
    if missing:
        raise DefinitionError("sink.table", missing)


def _normalize_uri(uri: str, local_roots: Sequence[str]) -> str:
    uri = uri.rstrip("/")
    scheme, _, rest = ("file", "", uri) if is_local(uri) else uri.partition("://")
    if scheme not in SINK_SCHEMES:
        raise DefinitionError("sink.uri", f"unknown scheme {scheme!r}: allowed "
                              + ", ".join(SINK_SCHEMES))
    if scheme == "file":
        # Local paths are kept plain: Beam's LocalFileSystem wants them so.
        path = local_sink_path(uri)
        check_local_sink(path, local_roots)
        return path
    if not rest or rest.startswith("/"):
        raise DefinitionError("sink.uri", f"{scheme}:// needs a bucket name")
    if ".." in rest.split("/"):
        raise DefinitionError("sink.uri", "sink.uri must not contain '..'")
    return uri


def _check_partition_by(pattern: Any) -> None:
    if not isinstance(pattern, str) or not pattern.strip("/"):
        raise DefinitionError("sink.partition_by", "partition_by must be a non-empty string like "
                              "'dt=%Y-%m-%d/hour=%H' or 'country={country}/dt=%Y-%m-%d'")
    for part in pattern.split("/"):
        if part in ("", ".", ".."):
            raise DefinitionError("sink.partition_by", f"partition_by segment {part!r} is not "
                                  "allowed: segments must be non-empty and not '.' or '..'")
    for column in _PARTITION_COLUMN.findall(pattern):
        if not _FIELD_NAME.match(column) and column not in ("_event_time", "_ingested_at"):
            raise DefinitionError("sink.partition_by", f"partition column {{{column}}} is not a "
                                  "valid column name")
    if "{" in _PARTITION_COLUMN.sub("", pattern) or "}" in _PARTITION_COLUMN.sub("", pattern):
        raise DefinitionError("sink.partition_by", "unbalanced '{' or '}' in partition_by")


def _parse_roll(raw: Any) -> Roll:
    if raw is None:
        return Roll()
    if not isinstance(raw, dict):
        raise DefinitionError("sink.roll", "sink.roll must be an object")
    unknown = set(raw) - {"interval_seconds", "max_bytes", "max_events"}
    if unknown:
        raise DefinitionError("sink.roll", f"unknown roll keys {sorted(unknown)}: allowed "
                              "interval_seconds, max_bytes, max_events")
    limits = {"interval_seconds": (0.1, 86_400.0), "max_bytes": (1024, 2**34),
              "max_events": (1, 50_000_000)}
    values: dict[str, Any] = {}
    for key, (low, high) in limits.items():
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise DefinitionError(f"sink.roll.{key}", f"{key} must be a number from {low} to {high}")
        values[key] = float(value) if key == "interval_seconds" else int(value)
    return Roll(**values)


def _parse_runner(raw: Any) -> RunnerSpec:
    if raw is None:
        return RunnerSpec()
    if not isinstance(raw, dict):
        raise DefinitionError("runner", "runner must be an object {type, options}")
    rtype = raw.get("type", "direct")
    if rtype not in RUNNER_TYPES:
        raise DefinitionError("runner.type", f"unknown runner {rtype!r}: allowed "
                              + ", ".join(RUNNER_TYPES))
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise DefinitionError("runner.options", "runner.options must be an object")
    return RunnerSpec(type=rtype, options=dict(options))
