"""Decode a request's events into one Arrow table, rejecting bad records.

Two vectorized passes, never one Python step per event:

1. The fast path: pyarrow parses the whole request (its JSON reader for
   NDJSON, ``pa.array`` for already-parsed objects) and every column is cast
   to the schema at once. This is what well-formed traffic costs.
2. When that fails, one DuckDB query over all records says, for every
   record and field, whether it parses, has the right type and is present;
   the good records are kept, each bad one is reported with its index and a
   code (``parse_failure``, ``type_mismatch``, ``missing_field``,
   ``too_large``, ``out_of_range``, ``unknown_field``; see
   :mod:`transforms.decode_sql`). It also handles what the fast path cannot,
   such as a timestamp field holding ISO strings in some events and epoch
   milliseconds in others.

Before either pass, the raw bytes are screened so that no parser sees what
could crash it or what could not be stored: a record nested deeper than
``PIPELINE_DO_MAX_JSON_DEPTH`` is ``too_deep`` (:mod:`transforms.json_depth`),
a line that is not UTF-8 is ``invalid_utf8``. Both checks run over the whole
body at once and cost little; the bad lines are located only when they fail.

Numbers: a number that cannot be stored as sent (``NaN``, ``Infinity``,
``1e400`` which overflows to infinity, an integer past int64 in an int64
field, a time or date outside years 0001-9999) is ``out_of_range``, never
wrapped or clamped. (pyarrow's and DuckDB's JSON readers accept ``NaN`` and
``Infinity``; refusing them keeps what reaches a sink finite. In a ``json``
field or a schemaless record from NDJSON they are kept as text.)

Fields not in the schema follow the definition's ``unknown_fields``:
``drop`` (their names are reported), ``reject`` (``unknown_field``) or
``keep`` (as a JSON object in the ``_extra`` column, NULL when none).

This module imports pyarrow only (no Beam, no Flask; DuckDB when a request
first needs the thorough pass): the ingest endpoint and the streaming job's
decode step share it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from transforms.decode_records import (
    MAX_DEAD_LETTER_CHARS,
    may_hold_large_record,
    records_from_lines,
    records_from_objects,
    screen_lines,
)
from transforms.decode_sql import DATE_DAYS, TIME_MICROS, verdict_query
from transforms.json_depth import MAX_JSON_DEPTH

__all__ = [
    "EVENT_TIME",
    "EXTRA",
    "INGESTED_AT",
    "REJECTION_CODES",
    "UNKNOWN_FIELD_POLICIES",
    "DecodedBatch",
    "Rejection",
    "arrow_schema",
    "decode_json_lines",
    "decode_objects",
]

INGESTED_AT = "_ingested_at"
EVENT_TIME = "_event_time"
EXTRA = "_extra"
UNKNOWN_FIELD_POLICIES = ("drop", "reject", "keep")  # as beam_pipelines.model.definition's
REJECTION_CODES = ("missing_field", "type_mismatch", "parse_failure", "too_large", "too_deep",
                   "invalid_utf8", "out_of_range", "unknown_field")
TIMESTAMP = pa.timestamp("us", tz="UTC")
_ARROW_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": TIMESTAMP,
    "date": pa.date32(),
    "json": pa.string(),
}
_MAX_REPORTED_UNKNOWN = 100


@dataclass(frozen=True)
class Rejection:
    index: int
    code: str  # one of REJECTION_CODES
    message: str
    record: str | None = None  # the raw record, kept in the dead-letter store

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class DecodedBatch:
    table: pa.Table
    rejected: list[Rejection]
    unknown_fields: list[str] = field(default_factory=list)  # dropped names, sorted


class _Mismatch(Exception):
    """The fast path cannot take this batch as it is."""


def arrow_schema(fields: Sequence[Any] | None, unknown_fields: str = "drop") -> pa.Schema:
    """The buffer's schema: the declared fields, ``_extra`` when unknown
    fields are kept, then ingest and event time."""
    columns = [pa.field("value", pa.string())] if fields is None else [
        pa.field(f.name, _ARROW_TYPES[f.type]) for f in fields]
    if fields is not None and unknown_fields == "keep":
        columns.append(pa.field(EXTRA, pa.string()))
    return pa.schema([*columns, pa.field(INGESTED_AT, TIMESTAMP), pa.field(EVENT_TIME, TIMESTAMP)])


def decode_json_lines(body: bytes, fields: Sequence[Any] | None, event_time_field: str | None,
                      *, now: datetime, max_record_bytes: int, unknown_fields: str = "drop",
                      max_depth: int = MAX_JSON_DEPTH) -> DecodedBatch:
    """Decode an NDJSON body: one object per line, blank lines skipped.

    A record's index is its place among the non-blank lines.
    """
    decoder = _Decoder(fields, event_time_field, now, unknown_fields)
    screened, objects = screen_lines(body, max_depth)
    if fields is not None and screened is None and objects is not None \
            and not may_hold_large_record(body, max_record_bytes):
        try:
            raw = _read_ndjson(body, objects)
            if raw.num_rows != objects:  # two objects on one line would shift indices
                raise _Mismatch("records")
            return decoder.fast(raw)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, _Mismatch):
            pass
    return decoder.thorough(records_from_lines(body, screened), max_record_bytes)


# One block per body (block_size is above any body), so a thread pool only adds
# hand-offs: single-threaded costs ~5% less CPU per 1,000-event body
# (benchmarks/README.md), and gunicorn's threads already parallelise across requests.
_READ_OPTIONS = pa_json.ReadOptions(block_size=1 << 26, use_threads=False)


def _read_ndjson(body: bytes, objects: int) -> pa.Table:
    """pyarrow's JSON reader over the body, through its streaming reader.

    For a body in one block both of pyarrow's readers infer the same schema and
    return the same one-chunk table, but ``read_json`` starts a readahead thread
    per call (even single-threaded): a thread created and joined per request,
    ~15% of the reader's CPU (benchmarks/README.md, "perf3"). The streaming
    reader reads its block on the shared I/O pool. It refuses a body with no
    record at all (``read_json`` returns no rows), so that one keeps ``read_json``;
    a body past one block whose later blocks change the types fails here and
    goes to the thorough pass, which reads every type.
    """
    if objects == 0:
        return pa_json.read_json(pa.BufferReader(body), read_options=_READ_OPTIONS)
    return pa_json.open_json(pa.BufferReader(body), read_options=_READ_OPTIONS).read_all()


def decode_objects(events: list[Any], fields: Sequence[Any] | None, event_time_field: str | None,
                   *, now: datetime, max_record_bytes: int, body_bytes: int,
                   unknown_fields: str = "drop",
                   too_deep: Mapping[int, str] | None = None) -> DecodedBatch:
    """Decode events already parsed from a JSON envelope (a list of objects).

    ``body_bytes`` is the request's size: no record can be too large when
    the whole request is within the record limit. ``too_deep`` maps the
    index of each record left out as too deep (its place in ``events``
    holds ``None``) to its raw text; :func:`transforms.json_depth.load_json_events`
    makes both, and events must come from it (or be as shallow).
    """
    decoder = _Decoder(fields, event_time_field, now, unknown_fields)
    too_deep = too_deep or {}
    if fields is not None and events and body_bytes <= max_record_bytes and not too_deep:
        try:
            struct = pa.array(events)
            if pa.types.is_struct(struct.type):
                return decoder.fast(pa.Table.from_struct_array(struct))
        except (pa.ArrowException, ValueError, OverflowError, _Mismatch):
            # ValueError: UnicodeEncodeError too (an unpaired surrogate).
            pass
    return decoder.thorough(records_from_objects(events, too_deep), max_record_bytes)


# -- the two passes -------------------------------------------------------------


class _Decoder:
    def __init__(self, fields: Sequence[Any] | None, event_time_field: str | None,
                 now: datetime, unknown_fields: str) -> None:
        if unknown_fields not in UNKNOWN_FIELD_POLICIES:
            raise ValueError(f"unknown_fields {unknown_fields!r}: allowed "
                             + ", ".join(UNKNOWN_FIELD_POLICIES))
        self.fields = fields
        self.event_time_field = event_time_field
        self.now = now
        self.unknown_fields = unknown_fields if fields is not None else "drop"
        self.schema = arrow_schema(fields, self.unknown_fields)

    def _finish(self, columns: list[pa.Array]) -> pa.Table:
        n = len(columns[0]) if columns else 0
        ingested = pa.repeat(pa.scalar(self.now, TIMESTAMP), n)
        event_time = ingested
        if self.event_time_field and self.fields is not None:
            names = [f.name for f in self.fields]
            event_time = columns[names.index(self.event_time_field)]
            if event_time.null_count:  # else the coalesce would copy it unchanged
                event_time = pc.coalesce(event_time, ingested)
        return pa.Table.from_arrays([*columns, ingested, event_time], schema=self.schema)

    def fast(self, raw: pa.Table) -> DecodedBatch:
        """Cast every column at once; raise ``_Mismatch`` if any record is off."""
        assert self.fields is not None
        n = raw.num_rows
        names = {f.name for f in self.fields}
        unknown = sorted(set(raw.column_names) - names)
        if unknown and self.unknown_fields != "drop":
            raise _Mismatch("unknown fields")  # the thorough pass names them per record
        for name in raw.column_names:
            column = raw.column(name)
            # NaN, Infinity: not JSON; the thorough pass judges (nulls are skipped)
            if pa.types.is_floating(column.type) \
                    and not pc.all(pc.is_finite(column), min_count=0).as_py():
                raise _Mismatch(name)
        columns = [_cast_column(raw, f, n) for f in self.fields]
        for f, column in zip(self.fields, columns):
            if f.required and column.null_count:
                raise _Mismatch(f.name)
        if self.unknown_fields == "keep":
            columns.append(pa.nulls(n, pa.string()))
        return DecodedBatch(self._finish(columns), [], unknown[:_MAX_REPORTED_UNKNOWN])

    def thorough(self, records: pa.Table, max_record_bytes: int) -> DecodedBatch:
        """Judge every record in one DuckDB query; keep the good, report the bad."""
        metadata = records.schema.metadata or {}
        raw = {int(k): v for k, v in json.loads(metadata.get(b"raw", b"{}")).items()}
        if "pre" not in records.column_names:
            records = records.append_column("pre", pa.nulls(records.num_rows, pa.string()))
        import duckdb  # here: well-formed traffic never needs it (~20 MB a process)

        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("records", records.replace_schema_metadata(None))
            checked = con.sql(verdict_query(self.fields, max_record_bytes,
                                            self.unknown_fields)).to_arrow_table()
        finally:
            con.close()
        good = pc.is_null(checked.column("_code"))
        rejected: list[Rejection] = []
        if checked.num_rows and not pc.all(good).as_py():
            bad = checked.filter(pc.invert(good)).select(["i", "_code", "_why", "l"])
            for i, c, why, line in zip(*(bad.column(k).to_pylist() for k in bad.column_names)):
                record = raw.get(int(i), line) or ""
                rejected.append(Rejection(int(i), c, why, record[:MAX_DEAD_LETTER_CHARS]))
        kept = checked.filter(good)
        dropped: list[str] = []
        if self.fields is None:
            columns = [kept.column("value").combine_chunks()]
        else:
            columns = [kept.column(f"v_{k}").combine_chunks().cast(_ARROW_TYPES[f.type])
                       for k, f in enumerate(self.fields)]
            if self.unknown_fields == "keep":
                columns.append(kept.column(EXTRA).combine_chunks().cast(pa.string()))
            elif self.unknown_fields == "drop" and kept.num_rows:
                names = pc.unique(pc.list_flatten(kept.column("_unknown"))).to_pylist()
                dropped = sorted(n for n in names if n is not None)[:_MAX_REPORTED_UNKNOWN]
        return DecodedBatch(self._finish(columns), rejected, dropped)


def _cast_column(raw: pa.Table, field: Any, n: int) -> pa.Array:
    """The fast path's strict cast of one column; ``_Mismatch`` when unsure.

    Every arithmetic step is checked and every time and date range-tested,
    so nothing wraps: what does not fit goes to the thorough pass, which
    names it ``out_of_range``.
    """
    target = _ARROW_TYPES[field.type]
    if field.name not in raw.column_names:
        return pa.nulls(n, target)
    column = raw.column(field.name).combine_chunks()
    if pa.types.is_null(column.type):
        return pa.nulls(n, target)
    try:
        cast = _cast_value(column, field.type, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        cast = None
    if cast is None:
        raise _Mismatch(field.name)
    if field.type == "timestamp" and not _within(cast.view(pa.int64()), TIME_MICROS):
        raise _Mismatch(field.name)
    if field.type == "date" and not _within(cast.view(pa.int32()), DATE_DAYS):
        raise _Mismatch(field.name)
    return cast


def _cast_value(column: pa.Array, ftype: str, target: pa.DataType) -> pa.Array | None:
    source = column.type
    if ftype == "timestamp":
        if pa.types.is_timestamp(source):
            if source.tz is None:
                column = pc.assume_timezone(column, "UTC")
            return column.cast(TIMESTAMP)
        if pa.types.is_string(source):
            return column.cast(TIMESTAMP)  # refuses strings without an offset
        if pa.types.is_integer(source):
            micros = pc.multiply_checked(column.cast(pa.int64()), 1000)
            return micros.cast(TIMESTAMP)
    elif ftype == "date":
        if pa.types.is_string(source) or pa.types.is_timestamp(source):
            return column.cast(target)
    elif ftype == "string":
        if pa.types.is_string(source):
            return column
    elif ftype == "int64":
        if pa.types.is_floating(source) and not _within(pc.abs(column), (0, _EXACT_FLOAT_INT)):
            # Past 2^53 a float no longer holds every integer: the reader may have
            # rounded an out-of-range literal into range. The thorough pass reads its text.
            return None
        if pa.types.is_integer(source) or pa.types.is_floating(source):
            return column.cast(target)  # safe cast: 1.5 and 2**63 are refused
    elif ftype == "float64":
        if pa.types.is_integer(source) or pa.types.is_floating(source):
            return column.cast(target)
    elif ftype == "bool" and pa.types.is_boolean(source):
        return column
    return None


_EXACT_FLOAT_INT = 2 ** 53


def _within(values: pa.Array, bounds: tuple[int, int]) -> bool:
    if values.null_count == len(values):
        return True
    low, high = pc.min_max(values).values()
    return bool(bounds[0] <= low.as_py() and high.as_py() <= bounds[1])
