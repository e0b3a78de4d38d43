"""The raw records of a request, screened before any parser sees them.

``screen_lines`` finds, over a whole NDJSON body at once, the lines no
parser may see: not UTF-8 (``invalid_utf8``) or nested too deep
(``too_deep``), and says whether the body is fit for pyarrow's reader.
``records_from_lines`` and ``records_from_objects`` then build the
thorough pass's input, ``records(i, l, pre)``: each record's index, its
text (NULL when refused already) and the code it was refused with; the raw
text of refused records rides along in the table's metadata (``raw``) for
the dead-letter store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.json_depth import line_bounds, too_deep_segments

__all__ = ["MAX_DEAD_LETTER_CHARS", "may_hold_large_record", "records_from_lines",
           "records_from_objects", "screen_lines"]

MAX_DEAD_LETTER_CHARS = 65_536
_OPEN_BRACE = ord("{")
_OPEN_ARRAY = ord("[")
_CASE_BIT_OFF = 0xDF  # "{" 0x7B and "[" 0x5B differ only in bit 5
# An escaped UTF-16 surrogate in serialized JSON; a lone one is not Unicode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def screen_lines(body: bytes, max_depth: int) -> tuple[pa.Array | None, int | None]:
    """Screen an NDJSON body before any parser sees it.

    Returns, per line (blank ones included), the code it is refused with
    (``invalid_utf8``, ``too_deep``) or null, None when all pass; and the
    number of records when every non-empty line starts with ``{`` (the only
    bodies given to pyarrow's reader, which crashes on a body starting with
    ``null`` and reads a line ``null`` as a record), else None.
    """
    data = np.frombuffer(body, dtype=np.uint8)
    starts, ends = line_bounds(data)
    nonempty = starts < ends
    firsts = data[starts[nonempty]]
    objects = int(nonempty.sum()) if bool((firsts == _OPEN_BRACE).all()) else None
    if objects is not None and _openers(data) - max(objects - 1, 0) <= max_depth:
        # Every record holds at least its own "{", so no line holds more openers
        # than the body's total less one per other record: none can be too deep,
        # and the per-line count (half of a typical body's screen) is skipped.
        deep = np.zeros(len(starts), dtype=bool)
    else:
        deep = too_deep_segments(data, starts, ends, max_depth)
    try:
        body.decode("utf-8")
        bad_utf8 = None
    except UnicodeDecodeError:
        bad_utf8 = _invalid_utf8_lines(body, len(starts))
    if bad_utf8 is None and not deep.any():
        return None, objects
    codes = np.full(len(starts), None, dtype=object)
    codes[deep] = "too_deep"
    if bad_utf8 is not None:
        codes[bad_utf8] = "invalid_utf8"
    return pa.array(codes, pa.string()), objects


def _openers(data: np.ndarray) -> int:
    """How many ``{`` and ``[`` bytes ``data`` holds (inside strings too: an upper bound)."""
    return int(np.count_nonzero((data & _CASE_BIT_OFF) == _OPEN_ARRAY))


def _invalid_utf8_lines(body: bytes, lines: int) -> np.ndarray:
    """Whether each line holds bytes that are not UTF-8.

    Undecodable bytes become lone surrogates U+DC80..U+DCFF, which valid
    UTF-8 can never produce, so one vectorized scan of the decoded text
    finds them and the newlines around them.
    """
    text = body.decode("utf-8", "surrogateescape").encode("utf-32-le", "surrogatepass")
    points = np.frombuffer(text, dtype=np.uint32)
    line = np.cumsum(points == 0x0A)
    bad = np.zeros(lines, dtype=bool)
    bad[line[(points >= 0xDC80) & (points <= 0xDCFF)]] = True
    return bad


def may_hold_large_record(body: bytes, max_record_bytes: int) -> bool:
    return len(body) > max_record_bytes and max(map(len, body.split(b"\n"))) > max_record_bytes


def records_from_lines(body: bytes, screened: pa.Array | None) -> pa.Table:
    """``records(i, l, pre, raw)`` for the non-blank lines; a refused line has no ``l``."""
    lines = pa.array(body.split(b"\n"), pa.binary())
    pre = screened if screened is not None else pa.nulls(len(lines), pa.string())
    refused = pc.is_valid(pre)
    # Cast unchecked only the lines known to be UTF-8; refused ones become NULL.
    text = pc.cast(pc.if_else(refused, pa.scalar(None, pa.binary()), lines), pa.string(),
                   safe=False)
    blank = pc.and_not(pc.equal(pc.utf8_trim_whitespace(text), ""), refused)
    keep = pc.invert(pc.fill_null(blank, False))
    kept_pre = pre.filter(keep)
    table = pa.table({"i": pa.array(np.arange(int(pc.sum(keep).as_py() or 0)), pa.int64()),
                      "l": text.filter(keep), "pre": kept_pre})
    raw = {}
    if screened is not None:
        bad = np.flatnonzero(pc.is_valid(kept_pre).to_numpy(zero_copy_only=False))
        kept_lines = lines.filter(keep)
        raw = {int(i): kept_lines[int(i)].as_py().decode("utf-8", "replace") for i in bad}
    return table.replace_schema_metadata({"raw": json.dumps(raw)}) if raw else table


def records_from_objects(events: list[Any], too_deep: Mapping[int, str]) -> pa.Table:
    try:
        # One serialization of the whole list; DuckDB splits it back into records.
        text = json.dumps(events, separators=(",", ":"), default=str, allow_nan=False)
        if _SURROGATE_ESCAPE.search(text):
            text.encode("utf-8")  # fine when every surrogate escape is paired
            json.dumps(events, ensure_ascii=False, default=str).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return _records_one_by_one(events, too_deep)
    import duckdb  # here: only a batch the fast path refused comes this way

    con = duckdb.connect()
    try:
        records = con.sql(
            "SELECT unnest(range(len(x))) AS i, unnest(x)::VARCHAR AS l "
            "FROM (SELECT json_extract(?::JSON, '$[*]') AS x)", params=[text]).to_arrow_table()
    finally:
        con.close()
    return _with_pre(records, {i: "too_deep" for i in too_deep}, too_deep)


def _records_one_by_one(events: list[Any], too_deep: Mapping[int, str]) -> pa.Table:
    """The fallback when the list holds what JSON cannot say (NaN, infinity,
    unpaired surrogates): a Python step per event, for such batches only."""
    lines: list[str | None] = []
    pre: dict[int, str] = {i: "too_deep" for i in too_deep}
    raw = dict(too_deep)
    for i, event in enumerate(events):
        try:
            line = json.dumps(event, separators=(",", ":"), default=str, allow_nan=False)
            json.dumps(event, ensure_ascii=False, default=str).encode("utf-8")
            lines.append(line)
        except ValueError as err:  # UnicodeEncodeError is one too
            pre.setdefault(i, "invalid_utf8" if isinstance(err, UnicodeEncodeError)
                           else "out_of_range")
            raw.setdefault(i, repr(event)[:MAX_DEAD_LETTER_CHARS])
            lines.append(None)
    records = pa.table({"i": pa.array(range(len(lines)), pa.int64()),
                        "l": pa.array(lines, pa.string())})
    return _with_pre(records, pre, raw)


def _with_pre(records: pa.Table, pre: Mapping[int, str], raw: Mapping[int, str]) -> pa.Table:
    codes = np.full(records.num_rows, None, dtype=object)
    for i, code in pre.items():
        codes[i] = code
    refused = pa.array(codes, pa.string())
    line = pc.if_else(pc.is_valid(refused), pa.scalar(None, pa.string()), records.column("l"))
    table = pa.table({"i": records.column("i"), "l": line, "pre": refused})
    return table.replace_schema_metadata({"raw": json.dumps(dict(raw))}) if raw else table
