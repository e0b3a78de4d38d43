"""Decode a request's events into one Arrow table, rejecting bad records.

Two vectorized passes, never one Python step per event:

1. The fast path: pyarrow parses the whole request (its JSON reader for
   NDJSON, ``pa.array`` for already-parsed objects) and every column is cast
   to the schema at once. This is what well-formed traffic costs.
2. When that fails, one DuckDB query over all records says, for every
   record and field, whether it parses, has the right type and is present;
   the good records are kept, each bad one is reported with its index and a
   code (``parse_failure``, ``type_mismatch``, ``missing_field``,
   ``too_large``). It also handles what the fast path cannot, such as a
   timestamp field holding ISO strings in some events and epoch
   milliseconds in others.

This module imports pyarrow and DuckDB only (no Beam, no Flask): the ingest
endpoint and the streaming job's decode step share it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

__all__ = [
    "EVENT_TIME",
    "INGESTED_AT",
    "DecodedBatch",
    "Rejection",
    "arrow_schema",
    "decode_json_lines",
    "decode_objects",
]

INGESTED_AT = "_ingested_at"
EVENT_TIME = "_event_time"
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
_MAX_DEAD_LETTER_CHARS = 65_536


@dataclass(frozen=True)
class Rejection:
    index: int
    code: str  # missing_field | type_mismatch | parse_failure | too_large
    message: str
    record: str | None = None  # the raw record, kept in the dead-letter store

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class DecodedBatch:
    table: pa.Table
    rejected: list[Rejection]


class _Mismatch(Exception):
    """The fast path cannot take this batch as it is."""


def arrow_schema(fields: Sequence[Any] | None) -> pa.Schema:
    """The buffer's schema: the declared fields, then ingest and event time."""
    columns = [pa.field("value", pa.string())] if fields is None else [
        pa.field(f.name, _ARROW_TYPES[f.type]) for f in fields]
    return pa.schema([*columns, pa.field(INGESTED_AT, TIMESTAMP), pa.field(EVENT_TIME, TIMESTAMP)])


def decode_json_lines(body: bytes, fields: Sequence[Any] | None, event_time_field: str | None,
                      *, now: datetime, max_record_bytes: int) -> DecodedBatch:
    """Decode an NDJSON body: one object per line, blank lines skipped.

    A record's index is its place among the non-blank lines.
    """
    decoder = _Decoder(fields, event_time_field, now)
    if fields is not None and not _may_hold_large_record(body, max_record_bytes):
        try:
            raw = pa_json.read_json(io.BytesIO(body),
                                    read_options=pa_json.ReadOptions(block_size=1 << 26))
            return DecodedBatch(decoder.fast(raw), [])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, _Mismatch):
            pass
    records = _records_from_lines(body)
    return decoder.thorough(records, max_record_bytes)


def decode_objects(events: list[Any], fields: Sequence[Any] | None, event_time_field: str | None,
                   *, now: datetime, max_record_bytes: int, body_bytes: int) -> DecodedBatch:
    """Decode events already parsed from a JSON envelope (a list of objects).

    ``body_bytes`` is the request's size: no record can be too large when
    the whole request is within the record limit.
    """
    decoder = _Decoder(fields, event_time_field, now)
    if fields is not None and events and body_bytes <= max_record_bytes:
        try:
            struct = pa.array(events)
            if pa.types.is_struct(struct.type):
                return DecodedBatch(decoder.fast(pa.Table.from_struct_array(struct)), [])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError,
                _Mismatch):
            pass
    # One serialization of the whole list; DuckDB splits it back into records.
    text = json.dumps(events, separators=(",", ":"), default=str)
    con = duckdb.connect()
    try:
        records = con.sql(
            "SELECT unnest(range(len(x))) AS i, unnest(x)::VARCHAR AS l "
            "FROM (SELECT json_extract(?::JSON, '$[*]') AS x)", params=[text]).to_arrow_table()
    finally:
        con.close()
    return decoder.thorough(records, max_record_bytes)


def _may_hold_large_record(body: bytes, max_record_bytes: int) -> bool:
    return len(body) > max_record_bytes and max(map(len, body.split(b"\n"))) > max_record_bytes


def _records_from_lines(body: bytes) -> pa.Table:
    text = pc.cast(pa.array(body.split(b"\n"), pa.binary()), pa.string(), safe=False)
    lines = text.filter(pc.not_equal(pc.utf8_trim_whitespace(text), ""))
    return pa.table({"i": pa.array(range(len(lines)), pa.int64()), "l": lines})


class _Decoder:
    def __init__(self, fields: Sequence[Any] | None, event_time_field: str | None,
                 now: datetime) -> None:
        self.fields = fields
        self.event_time_field = event_time_field
        self.now = now
        self.schema = arrow_schema(fields)

    def _finish(self, columns: list[pa.Array]) -> pa.Table:
        n = len(columns[0]) if columns else 0
        ingested = pa.repeat(pa.scalar(self.now, TIMESTAMP), n)
        event_time = ingested
        if self.event_time_field and self.fields is not None:
            names = [f.name for f in self.fields]
            event_time = pc.coalesce(columns[names.index(self.event_time_field)], ingested)
        return pa.Table.from_arrays([*columns, ingested, event_time], schema=self.schema)

    # -- pass 1 ---------------------------------------------------------------

    def fast(self, raw: pa.Table) -> pa.Table:
        """Cast every column at once; raise ``_Mismatch`` if any record is off."""
        assert self.fields is not None
        n = raw.num_rows
        columns = [_cast_column(raw, f, n) for f in self.fields]
        for f, column in zip(self.fields, columns):
            if f.required and column.null_count:
                raise _Mismatch(f.name)
        return self._finish(columns)

    # -- pass 2 ---------------------------------------------------------------

    def thorough(self, records: pa.Table, max_record_bytes: int) -> DecodedBatch:
        """Judge every record in one DuckDB query; keep the good, report the bad."""
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("records", records)
            checked = con.sql(self._query(max_record_bytes)).to_arrow_table()
        finally:
            con.close()
        code = checked.column("_code")
        good = pc.is_null(code)
        rejected: list[Rejection] = []
        if checked.num_rows and not pc.all(good).as_py():
            bad = checked.filter(pc.invert(good)).select(["i", "_code", "_why", "l"])
            for i, c, why, line in zip(*(bad.column(k).to_pylist() for k in bad.column_names)):
                rejected.append(Rejection(int(i), c, why, (line or "")[:_MAX_DEAD_LETTER_CHARS]))
        kept = checked.filter(good)
        if self.fields is None:
            columns = [kept.column("value").combine_chunks()]
        else:
            columns = [kept.column(f"v_{k}").combine_chunks().cast(_ARROW_TYPES[f.type])
                       for k, f in enumerate(self.fields)]
        return DecodedBatch(self._finish(columns), rejected)

    def _query(self, max_record_bytes: int) -> str:
        valid = (f"CASE WHEN strlen(l) <= {int(max_record_bytes)} AND json_valid(l) "
                 "THEN json_type(l::JSON) = 'OBJECT' ELSE false END")
        if self.fields is None:
            base = f"SELECT i, l, strlen(l) > {int(max_record_bytes)} AS too_large, " \
                   f"{valid} AS is_object FROM records"
            return f"SELECT i, l, l AS value, {_verdict([])} FROM ({base})"
        # One parse per record: every field's JSON value in one multi-path extract,
        # then each value's type and text once, in layers DuckDB does not re-evaluate.
        paths = ", ".join("'$.\"" + f.name + "\"'" for f in self.fields)
        base = (f"SELECT i, l, strlen(l) > {int(max_record_bytes)} AS too_large, {valid} AS is_object "
                "FROM records")
        extracted = f"SELECT *, CASE WHEN is_object THEN json_extract(l, [{paths}]) END AS e " \
                    f"FROM ({base})"
        elements = ", ".join(f"e[{k + 1}] AS j{k}" for k in range(len(self.fields)))
        split = f"SELECT i, l, too_large, is_object, {elements} FROM ({extracted})"
        typed = ", ".join(f"json_type(j{k}) AS t{k}, (j{k} ->> '$') AS s{k}"
                          for k in range(len(self.fields)))
        described = f"SELECT *, {typed} FROM ({split})"
        parts, checks = [], []
        for k, f in enumerate(self.fields):
            value, ok = _typed(f.type, f"t{k}", f"s{k}", f"j{k}::VARCHAR")
            ok = ok.replace("{value}", f"v_{k}")
            parts.append(f"{value} AS v_{k}")
            present = f"coalesce(t{k}, 'NULL') <> 'NULL'"
            checks.append((f.name, f.type, f.required, f"({present} AND NOT ({ok}))",
                           f"NOT ({present})"))
        inner = f"SELECT *, {', '.join(parts)} FROM ({described})"
        return f"SELECT *, {_verdict(checks)} FROM ({inner})"


def _verdict(checks: list[tuple[str, str, bool, str, str]]) -> str:
    """SQL for ``_code`` and ``_why``: NULL when the record is good."""
    code = ["WHEN too_large THEN 'too_large'", "WHEN NOT is_object THEN 'parse_failure'"]
    why = ["WHEN too_large THEN 'record is larger than the limit'",
           "WHEN NOT is_object THEN 'not a JSON object'"]
    for name, ftype, _required, wrong_type, _absent in checks:
        code.append(f"WHEN {wrong_type} THEN 'type_mismatch'")
        why.append(f"WHEN {wrong_type} THEN {_sql_str(f'field {name!r} must be {ftype}')}")
    for name, _ftype, required, _wrong_type, absent in checks:
        if required:
            code.append(f"WHEN {absent} THEN 'missing_field'")
            why.append(f"WHEN {absent} THEN "
                       f"{_sql_str(f'required field {name!r} is missing or null')}")
    return (f"CASE {' '.join(code)} END AS _code, CASE {' '.join(why)} END AS _why")


def _typed(ftype: str, jt: str, text: str, raw_json: str) -> tuple[str, str]:
    """(value expression, type-is-acceptable expression) for one field."""
    numeric = f"{jt} IN ('BIGINT', 'UBIGINT', 'DOUBLE')"
    if ftype == "string":
        return f"CASE WHEN {jt} = 'VARCHAR' THEN {text} END", f"{jt} = 'VARCHAR'"
    if ftype == "int64":
        # 2.0 is 2; 2.5 is refused, as the fast path's safe cast refuses it.
        value = (f"CASE WHEN {jt} IN ('BIGINT', 'UBIGINT') THEN TRY_CAST({text} AS BIGINT) "
                 f"WHEN {jt} = 'DOUBLE' AND TRY_CAST({text} AS DOUBLE) = "
                 f"floor(TRY_CAST({text} AS DOUBLE)) THEN TRY_CAST({text} AS BIGINT) END")
        return value, "{value} IS NOT NULL"
    if ftype == "float64":
        return f"CASE WHEN {numeric} THEN TRY_CAST({text} AS DOUBLE) END", numeric
    if ftype == "bool":
        return f"CASE WHEN {jt} = 'BOOLEAN' THEN {text}::BOOLEAN END", f"{jt} = 'BOOLEAN'"
    if ftype == "timestamp":
        value = (f"CASE WHEN {jt} = 'VARCHAR' THEN TRY_CAST({text} AS TIMESTAMPTZ) "
                 f"WHEN {numeric} THEN CAST(make_timestamp(CAST(TRY_CAST({text} AS DOUBLE) * 1000 "
                 f"AS BIGINT)) AS TIMESTAMPTZ) END")
        return value, "{value} IS NOT NULL"
    if ftype == "date":
        value = f"CASE WHEN {jt} = 'VARCHAR' THEN TRY_CAST({text} AS DATE) END"
        return value, "{value} IS NOT NULL"
    # json: any value, kept as its JSON text
    return f"CASE WHEN coalesce({jt}, 'NULL') <> 'NULL' THEN {raw_json} END", "true"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _cast_column(raw: pa.Table, field: Any, n: int) -> pa.Array:
    """The fast path's strict cast of one column; ``_Mismatch`` when unsure."""
    target = _ARROW_TYPES[field.type]
    if field.name not in raw.column_names:
        return pa.nulls(n, target)
    column = raw.column(field.name).combine_chunks()
    source = column.type
    if pa.types.is_null(source):
        return pa.nulls(n, target)
    try:
        if field.type == "timestamp":
            if pa.types.is_timestamp(source):
                if source.tz is None:
                    column = pc.assume_timezone(column, "UTC")
                return column.cast(TIMESTAMP)
            if pa.types.is_string(source):
                return column.cast(TIMESTAMP)  # refuses strings without an offset
            if pa.types.is_integer(source):
                return pc.multiply(column, 1000).cast(pa.int64()).cast(TIMESTAMP)
        elif field.type == "date":
            if pa.types.is_string(source) or pa.types.is_timestamp(source):
                return column.cast(target)
        elif field.type == "string":
            if pa.types.is_string(source):
                return column
        elif field.type == "int64":
            if pa.types.is_integer(source) or pa.types.is_floating(source):
                return column.cast(target)  # safe cast: 1.5 is refused
        elif field.type == "float64":
            if pa.types.is_integer(source) or pa.types.is_floating(source):
                return column.cast(target)
        elif field.type == "bool" and pa.types.is_boolean(source):
            return column
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    raise _Mismatch(field.name)
