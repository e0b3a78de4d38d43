"""How deep JSON nests, measured on the raw bytes before any parser recurses.

pyarrow's JSON reader, ``json.loads`` and DuckDB's JSON functions all
recurse into nested values: a 10,000-deep array crashes the first and makes
the second raise ``RecursionError``. So nesting is measured here, with numpy
over the body's bytes, and a record deeper than ``MAX_JSON_DEPTH``
(``PIPELINE_DO_MAX_JSON_DEPTH``, default 64; the record's own object is
level 1) never reaches a parser.

The measure is exact for well-formed JSON: brackets inside strings do not
count (a quote preceded by an odd run of backslashes is escaped). A cheap
bound goes first: a line with no more openers (``{``, ``[``) than the limit
cannot be too deep, so typical traffic never pays for the exact scan.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.limits import MAX_JSON_DEPTH

__all__ = ["MAX_JSON_DEPTH", "JsonEvents", "depth_exceeded", "line_bounds", "load_json_events",
           "too_deep_segments"]


_OPEN_OBJECT, _OPEN_ARRAY, _CLOSE_OBJECT, _CLOSE_ARRAY = b"{[}]"
_QUOTE, _BACKSLASH, _COMMA, _NEWLINE = b'"\\,\n'
_LEADING_SPACE = re.compile(rb"\s*")
_CASE_BIT_OFF = 0xDF  # "{" 0x7B and "[" 0x5B differ only in bit 5, as do "}" and "]"


def line_bounds(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of every ``\\n``-separated line of ``data``, ends exclusive."""
    newlines = np.flatnonzero(data == _NEWLINE)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    return starts, ends


def too_deep_segments(data: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                      limit: int = MAX_JSON_DEPTH) -> np.ndarray:
    """For each segment ``data[start:end]``, whether it nests deeper than ``limit``."""
    verdict = np.zeros(len(starts), dtype=bool)
    if len(starts) == 0:
        return verdict
    openers = np.flatnonzero((data & _CASE_BIT_OFF) == _OPEN_ARRAY)  # { and [ only
    if len(openers) <= limit:
        return verdict
    # Openers per segment, an upper bound on its depth.
    per_segment = (np.searchsorted(openers, ends) - np.searchsorted(openers, starts))
    suspects = np.flatnonzero(per_segment > limit)
    if len(suspects):
        verdict[suspects] = _max_depths(data, starts[suspects], ends[suspects]) > limit
    return verdict


def depth_exceeded(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether one JSON document nests deeper than ``limit``."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    data = np.frombuffer(raw, dtype=np.uint8)
    return bool(_max_depths(data, np.array([0]), np.array([len(data)]))[0] > limit)


def _max_depths(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Exact maximum nesting of each segment ``data[start:end]``, strings ignored."""
    _pos, _chars, segment, depth, _in_string = _scan(data, starts, ends)
    out = np.zeros(len(starts), dtype=np.int64)
    np.maximum.at(out, segment, depth)
    return out


def _scan(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, extra: bytes = b""
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every bracket (and ``extra`` byte) inside the segments: its position,
    byte, segment, the nesting depth after it and whether it lies in a string.

    Only brackets are walked; whether one is inside a string is the parity
    of the real (unescaped) quotes before it since its segment began.
    """
    folded = data & _CASE_BIT_OFF  # { and [ fold to [, } and ] to ]; nothing else does
    wanted = (folded == _OPEN_ARRAY) | (folded == _CLOSE_ARRAY)
    for byte in extra:
        wanted |= data == byte
    pos = np.flatnonzero(wanted)
    segment = np.searchsorted(starts, pos, side="right") - 1
    inside = (segment >= 0) & (pos < ends[np.maximum(segment, 0)])
    pos, segment = pos[inside], segment[inside]
    chars = data[pos]
    quotes = np.flatnonzero(data == _QUOTE)
    if len(quotes):
        quotes = quotes[~_escaped(data, quotes)]
    quotes_before = np.searchsorted(quotes, pos)
    in_string = ((quotes_before - np.searchsorted(quotes, starts)[segment]) & 1) == 1
    step = np.zeros(len(chars), dtype=np.int64)
    step[(chars == _OPEN_OBJECT) | (chars == _OPEN_ARRAY)] = 1
    step[(chars == _CLOSE_OBJECT) | (chars == _CLOSE_ARRAY)] = -1
    step[in_string] = 0
    depth = np.cumsum(step)
    first = np.searchsorted(segment, np.arange(len(starts)))
    depth -= np.concatenate(([0], depth))[first][segment]
    return pos, chars, segment, depth, in_string


def _escaped(data: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Whether each quote follows an odd run of backslashes."""
    escaped = np.zeros(len(quotes), dtype=bool)
    after = np.flatnonzero(data[np.maximum(quotes - 1, 0)] == _BACKSLASH)
    after = after[quotes[after] > 0]
    if not len(after):
        return escaped
    backslashes = np.flatnonzero(data == _BACKSLASH)
    breaks = np.flatnonzero(np.diff(backslashes) != 1)
    run_starts = backslashes[np.concatenate(([0], breaks + 1))]
    run_ends = backslashes[np.concatenate((breaks, [len(backslashes) - 1]))]
    # Each such quote ends a run of backslashes right before it.
    at = np.searchsorted(run_ends, quotes[after] - 1)
    escaped[after] = (run_ends[at] - run_starts[at]) % 2 == 0
    return escaped


@dataclass(frozen=True)
class JsonEvents:
    """A JSON request body's events; too-deep ones are ``None`` and listed by index."""

    events: list[Any]
    too_deep: dict[int, str]  # index -> the record's raw text


def load_json_events(raw: bytes, limit: int = MAX_JSON_DEPTH) -> JsonEvents:
    """Parse a JSON array (or one object) of events, leaving out the too-deep ones.

    The array itself is not a level: each element may nest ``limit`` deep.
    Raises ``ValueError`` for malformed JSON. ``NaN`` and ``Infinity`` are
    parsed (as DuckDB parses them in NDJSON) and refused per record later.
    """
    skip = _LEADING_SPACE.match(raw).end()  # type: ignore[union-attr]
    first = raw[skip:skip + 1]
    if first != b"[":
        if depth_exceeded(raw, limit):
            return JsonEvents([None], {0: raw.decode("utf-8", "replace").strip()})
        return JsonEvents(_loads(raw), {})
    if not depth_exceeded(raw, limit + 1):
        return JsonEvents(_loads(raw), {})
    # Split the array at its own commas (depth 1, outside strings) and put
    # ``null`` in place of each too-deep element before parsing.
    data = np.frombuffer(raw, dtype=np.uint8)
    whole = (np.array([0]), np.array([len(data)]))
    pos, chars, _segment, depth, in_string = _scan(data, *whole, extra=b",")
    outside = ~in_string
    opening = int(pos[np.flatnonzero(chars == _OPEN_ARRAY)[0]])
    closers = pos[(depth == 0) & (chars == _CLOSE_ARRAY) & outside]
    closing = int(closers[0]) if len(closers) else len(data)
    commas = pos[(chars == _COMMA) & (depth == 1) & outside]
    commas = commas[(commas > opening) & (commas < closing)]
    starts = np.concatenate(([opening + 1], commas + 1))
    ends = np.concatenate((commas, [closing]))
    deep = np.flatnonzero(too_deep_segments(data, starts, ends, limit)).tolist()
    pieces, position = [], 0
    for i in deep:
        pieces += [raw[position:int(starts[i])], b"null"]
        position = int(ends[i])
    pieces.append(raw[position:])
    too_deep = {i: raw[int(starts[i]):int(ends[i])].decode("utf-8", "replace").strip()
                for i in deep}
    return JsonEvents(_loads(b"".join(pieces)), too_deep)


def _loads(raw: bytes) -> Any:
    value = json.loads(raw)
    return [value] if isinstance(value, dict) else value
