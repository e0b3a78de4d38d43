"""The thorough pass's verdict: one DuckDB query judges every record.

The query reads a relation ``records(i, l, pre)``: the record's index, its
text (NULL when it was already refused) and ``pre``, the code it was
refused with before any parser saw it (``too_deep``, ``invalid_utf8``).
It yields, per record, every field's typed value ``v_<k>``, ``_extra`` (the
unknown fields as a JSON object, when they are kept), ``_unknown`` (their
names) and the verdict ``_code``/``_why``, NULL when the record is good.

Ranges: timestamps and dates must fall in years 0001-9999, what Parquet
readers and DuckDB read back as written; integers must fit int64 and
floats must be finite (``1e400`` overflows to infinity), else the record is
``out_of_range``. Nothing is cast where a cast could fail or wrap: every
conversion is a TRY_CAST guarded by a range test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["DATE_DAYS", "TIME_MICROS", "verdict_query"]

# Years 0001..9999 as microseconds and days since the Unix epoch.
TIME_MICROS = (-62_135_596_800_000_000, 253_402_300_799_999_999)
DATE_DAYS = (-719_162, 2_932_896)
_TIME_SQL = ("TIMESTAMPTZ '0001-01-01 00:00:00+00'", "TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'")
_DATE_SQL = ("DATE '0001-01-01'", "DATE '9999-12-31'")
_INT64_SQL = ("-9223372036854775808.0", "9223372036854775808.0")


def verdict_query(fields: Sequence[Any] | None, max_record_bytes: int, unknown_fields: str) -> str:
    """SQL over ``records`` that judges every record against ``fields``."""
    limit = int(max_record_bytes)
    base = (f"SELECT i, l, pre, strlen(l) > {limit} AS too_large, "
            f"coalesce(strlen(l) <= {limit} AND json_valid(l), false) AS is_json FROM records")
    # json_valid accepts an unpaired surrogate escape (\ud800) that every
    # later JSON function refuses; TRY_CAST finds it.
    parsed = ("SELECT *, is_json AND TRY_CAST(l AS JSON) IS NULL AS bad_escape, "
              "CASE WHEN is_json AND TRY_CAST(l AS JSON) IS NOT NULL "
              "THEN json_type(l) = 'OBJECT' ELSE false END AS is_object "
              f"FROM ({base})")
    if fields is None:
        return f"SELECT i, l, l AS value, {_verdict([], None)} FROM ({parsed})"
    names = [f.name for f in fields]
    known = "[" + ", ".join(_sql_str(n) for n in names) + "]"
    unknown = (f"CASE WHEN is_object THEN list_distinct(list_filter(json_keys(l), "
               f"lambda k: NOT list_contains({known}, k))) END")
    # One parse per record: every field's JSON value in one multi-path extract,
    # then each value's type and text once, in layers DuckDB does not re-evaluate.
    paths = ", ".join(_sql_str('$."' + n + '"') for n in names)
    extracted = (f"SELECT *, CASE WHEN is_object THEN json_extract(l, [{paths}]) END AS e, "
                 f"{unknown} AS _unknown FROM ({parsed})")
    elements = ", ".join(f"e[{k + 1}] AS j{k}" for k in range(len(fields)))
    split = (f"SELECT i, l, pre, too_large, bad_escape, is_object, _unknown, {elements} "
             f"FROM ({extracted})")
    typed = ", ".join(f"json_type(j{k}) AS t{k}, (j{k} ->> '$') AS s{k}, "
                      f"TRY_CAST(j{k} ->> '$' AS DOUBLE) AS d{k}" for k in range(len(fields)))
    described = f"SELECT *, {typed} FROM ({split})"
    parts, checks = [], []
    for k, f in enumerate(fields):
        value, out_of_range = _typed(f.type, f"t{k}", f"s{k}", f"d{k}", f"j{k}::VARCHAR")
        parts.append(f"{value} AS v_{k}")
        present = f"coalesce(t{k}, 'NULL') <> 'NULL'"
        checks.append((f.name, f.type, f.required, present,
                       out_of_range.replace("{value}", f"v_{k}"), f"v_{k} IS NULL"))
    extra = "NULL::VARCHAR"
    if unknown_fields == "keep":
        pointer = "'/' || replace(replace(k, '~', '~0'), '/', '~1')"
        extra = ("CASE WHEN len(_unknown) > 0 THEN '{' || array_to_string(list_transform("
                 f"_unknown, lambda k: to_json(k)::VARCHAR || ':' || "
                 f"json_extract(l, {pointer})::VARCHAR), ',') || '}}' END")
    inner = f"SELECT *, {', '.join(parts)}, {extra} AS _extra FROM ({described})"
    reject_unknown = ", ".join(names) if unknown_fields == "reject" else None
    return f"SELECT *, {_verdict(checks, reject_unknown)} FROM ({inner})"


def _verdict(checks: list[tuple[str, str, bool, str, str, str]],
             reject_unknown: str | None) -> str:
    """SQL for ``_code`` and ``_why``: NULL when the record is good.

    The first failing check names the record's code; the order is the
    order of the list below.
    """
    cases = [("pre IS NOT NULL", "pre", "CASE pre WHEN 'too_deep' THEN "
              "'record nests deeper than the limit' WHEN 'invalid_utf8' THEN "
              "'record is not valid UTF-8' ELSE 'record holds NaN or an infinite number' END"),
             ("too_large", "'too_large'", "'record is larger than the limit'"),
             ("bad_escape", "'invalid_utf8'",
              "'record holds an unpaired UTF-16 surrogate escape'"),
             ("NOT is_object", "'parse_failure'", "'not a JSON object'")]
    if reject_unknown is not None:
        cases.append(("len(_unknown) > 0", "'unknown_field'",
                      "'field ' || to_json(_unknown[1])::VARCHAR || "
                      f"' is not in the schema: allowed {_sql_str(reject_unknown)[1:-1]}'"))
    for name, ftype, _required, present, out_of_range, _null in checks:
        cases.append((f"{present} AND ({out_of_range})", "'out_of_range'",
                      _sql_str(f"field {name!r} is out of range for {ftype}"
                               + _RANGE_TEXT.get(ftype, ""))))
    for name, ftype, _required, present, _out_of_range, null in checks:
        cases.append((f"{present} AND {null}", "'type_mismatch'",
                      _sql_str(f"field {name!r} must be {ftype}")))
    for name, _ftype, required, present, _out_of_range, _null in checks:
        if required:
            cases.append((f"NOT ({present})", "'missing_field'",
                          _sql_str(f"required field {name!r} is missing or null")))
    code = " ".join(f"WHEN {when} THEN {then}" for when, then, _ in cases)
    why = " ".join(f"WHEN {when} THEN {then}" for when, _, then in cases)
    return f"CASE {code} END AS _code, CASE {why} END AS _why"


_RANGE_TEXT = {"timestamp": ": allowed years 0001 to 9999", "date": ": allowed years 0001 to 9999",
               "int64": ": allowed -2^63 to 2^63-1", "float64": ": allowed finite numbers"}


def _typed(ftype: str, jt: str, text: str, number: str, raw_json: str) -> tuple[str, str]:
    """(value expression, out-of-range expression) for one present field.

    The value is NULL when the JSON value has the wrong type or is out of
    range; the second expression tells the two apart.
    """
    numeric = f"{jt} IN ('BIGINT', 'UBIGINT', 'DOUBLE')"
    finite = f"isfinite({number})"
    if ftype == "string":
        return f"CASE WHEN {jt} = 'VARCHAR' THEN {text} END", "false"
    if ftype == "int64":
        # 2.0 is 2; 2.5 is refused, as the fast path's safe cast refuses it.
        # An integer literal past int64 is parsed as a DOUBLE, rounded: judge its
        # text, not the rounded number (-2^63 - 1 would round into range).
        literal = f"regexp_full_match({text}, '-?[0-9]+')"
        integral = (f"{jt} = 'DOUBLE' AND NOT {literal} AND {finite} "
                    f"AND {number} = floor({number})")
        fits = f"{number} >= {_INT64_SQL[0]} AND {number} < {_INT64_SQL[1]}"
        whole = f"({jt} IN ('BIGINT', 'UBIGINT') OR ({jt} = 'DOUBLE' AND {literal}))"
        value = (f"CASE WHEN {whole} THEN TRY_CAST({text} AS BIGINT) "
                 f"WHEN {integral} AND {fits} THEN TRY_CAST({number} AS BIGINT) END")
        return value, (f"({whole} AND TRY_CAST({text} AS BIGINT) IS NULL) "
                       f"OR ({jt} = 'DOUBLE' AND NOT coalesce({finite}, false)) "
                       f"OR ({integral} AND NOT ({fits}))")
    if ftype == "float64":
        return f"CASE WHEN {numeric} AND {finite} THEN {number} END", \
               f"{numeric} AND NOT coalesce({finite}, false)"
    if ftype == "bool":
        return f"CASE WHEN {jt} = 'BOOLEAN' THEN {text}::BOOLEAN END", "false"
    if ftype == "timestamp":
        # Epoch milliseconds, compared as whole numbers a double holds exactly.
        low, high = TIME_MICROS[0] // 1000, TIME_MICROS[1] // 1000 + 1
        in_range = f"{finite} AND {number} >= {low} AND {number} < {high}"
        parsed = f"TRY_CAST({text} AS TIMESTAMPTZ)"
        value = (f"CASE WHEN {jt} = 'VARCHAR' AND {parsed} BETWEEN {_TIME_SQL[0]} AND "
                 f"{_TIME_SQL[1]} THEN {parsed} "
                 f"WHEN {numeric} AND {in_range} THEN CAST(make_timestamp(TRY_CAST("
                 f"round({number} * 1000) AS BIGINT)) AS TIMESTAMPTZ) END")
        return value, (f"({jt} = 'VARCHAR' AND {parsed} IS NOT NULL AND NOT ({parsed} BETWEEN "
                       f"{_TIME_SQL[0]} AND {_TIME_SQL[1]})) "
                       f"OR ({numeric} AND NOT coalesce({in_range}, false))")
    if ftype == "date":
        parsed = f"TRY_CAST({text} AS DATE)"
        in_range = f"{parsed} BETWEEN {_DATE_SQL[0]} AND {_DATE_SQL[1]}"
        return (f"CASE WHEN {jt} = 'VARCHAR' AND {in_range} THEN {parsed} END",
                f"{jt} = 'VARCHAR' AND {parsed} IS NOT NULL AND NOT ({in_range})")
    # json: any value, kept as its JSON text
    return f"CASE WHEN coalesce({jt}, 'NULL') <> 'NULL' THEN {raw_json} END", "false"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
