"""Split an Arrow table into its partitions: ``dt=%Y-%m-%d/country={country}``.

Time patterns are filled from ``_event_time`` when the table has it, else
from one fallback time (the epoch's planned time, so a re-run epoch lands
in the same place). ``{column}`` values are escaped Hive-style so that
every value, whatever it holds, becomes one path segment that any
filesystem and object store accepts and that cannot leave the sink prefix:

- ``/``, ``\\``, ``%``, ``=``, ``~``, the characters Windows and URLs reserve
  and every control character are percent-encoded; ``.`` and ``..`` (any run
  of dots only) become ``%2E`` runs;
- null and the empty string become ``__null__`` (``NULL_PARTITION``); the
  value ``__null__`` itself is encoded as ``%5F%5Fnull%5F%5F``;
- a segment longer than ``MAX_SEGMENT_BYTES`` (100) UTF-8 bytes keeps its
  first 64 bytes and ends with ``~`` and 16 hex digits of the SHA-256 of the
  whole value, so a 300-character value is still writable (a filesystem
  takes 255 bytes per name) and distinct values stay distinct: only such
  shortened segments hold a ``~``.

The mapping is deterministic: the same value lands in the same directory
in every epoch. Values are escaped once per distinct value, vectorized with
pyarrow compute; the number of Python steps is the number of partitions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["MAX_SEGMENT_BYTES", "NULL_PARTITION", "escape_partition_values", "split_partitions"]

NULL_PARTITION = "__null__"
MAX_SEGMENT_BYTES = 100
_KEPT_BYTES = 64
_COLUMN = re.compile(r"\{([^{}]*)\}")
_ESCAPES = [("%", "%25"), ("/", "%2F"), ("\\", "%5C"), ("=", "%3D"), (":", "%3A"),
            ("#", "%23"), ("?", "%3F"), ("*", "%2A"), ('"', "%22"), ("<", "%3C"),
            (">", "%3E"), ("|", "%7C"), ("~", "%7E"),
            *((chr(c), f"%{c:02X}") for c in [*range(0x20), 0x7F])]
_EVENT_TIME = "_event_time"


def escape_partition_values(values: pa.Array) -> pa.Array:
    """Escape a column's values for use as one path segment each (see the module doc)."""
    text = values.cast(pa.string()) if not pa.types.is_string(values.type) else values
    encoded = text.dictionary_encode()
    escaped = _escape_distinct(encoded.dictionary).take(encoded.indices)
    return pc.fill_null(escaped, NULL_PARTITION)


def _escape_distinct(text: pa.Array) -> pa.Array:
    for raw, encoded in _ESCAPES:
        text = pc.replace_substring(text, raw, encoded)
    # A segment made only of dots would walk up or stay put: encode it.
    only_dots = pc.match_substring_regex(text, r"^\.+$")
    text = pc.if_else(only_dots, pc.replace_substring(text, ".", "%2E"), text)
    text = pc.if_else(pc.equal(text, NULL_PARTITION), "%5F%5Fnull%5F%5F", text)
    text = pc.if_else(pc.equal(text, ""), NULL_PARTITION, text)
    long = pc.greater(pc.binary_length(text), MAX_SEGMENT_BYTES)
    if not pc.any(long).as_py():
        return text
    # One Python step per distinct over-long value.
    positions = pc.indices_nonzero(long)
    shortened = pa.array([_shorten(v) for v in text.take(positions).to_pylist()], pa.string())
    return pc.replace_with_mask(text, long, shortened)


def _shorten(segment: str) -> str:
    raw = segment.encode()
    head = raw[:_KEPT_BYTES].decode("utf-8", "ignore")
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:16]}"


def partition_keys(table: pa.Table, pattern: str, fallback_time: datetime) -> pa.Array:
    """One relative path per row, from the pattern."""
    n = table.num_rows
    times = table.column(_EVENT_TIME) if _EVENT_TIME in table.column_names else None
    pieces: list[pa.Array | str] = []
    position = 0
    for match in _COLUMN.finditer(pattern):
        pieces.extend(_time_piece(pattern[position:match.start()], times, fallback_time, n))
        column = match.group(1)
        if column not in table.column_names:
            pieces.append(pa.repeat(pa.scalar(NULL_PARTITION), n))
        else:
            pieces.append(escape_partition_values(table.column(column).combine_chunks()))
        position = match.end()
    pieces.extend(_time_piece(pattern[position:], times, fallback_time, n))
    arrays = [p if isinstance(p, pa.Array) else pa.repeat(pa.scalar(p), n) for p in pieces]
    if not arrays:
        return pa.repeat(pa.scalar(""), n)
    if len(arrays) == 1:
        return arrays[0]
    return pc.binary_join_element_wise(*arrays, "")


# The finest strftime directive in a pattern decides how far event times can
# be truncated before formatting without changing the result.
_UNITS = [("second", ("%S", "%s", "%T", "%X", "%c")), ("minute", ("%M", "%R")),
          ("hour", ("%H", "%I", "%p", "%k", "%l")), ("day", ("%d", "%j", "%e", "%a", "%A", "%u",
                                                             "%w", "%D", "%F", "%x")),
          ("month", ("%m", "%b", "%B", "%h")), ("year", ("%Y", "%y", "%C", "%G"))]


def _finest_unit(pattern: str) -> str | None:
    for unit, directives in _UNITS:
        if any(d in pattern for d in directives):
            return unit
    return None


def _time_piece(literal: str, times: pa.ChunkedArray | None, fallback: datetime,
                n: int) -> list[pa.Array | str]:
    if not literal:
        return []
    if "%" not in literal:
        return [literal]
    if times is None:
        return [fallback.strftime(literal)]
    values = times.combine_chunks()
    unit = _finest_unit(literal)
    if unit is None:
        filled = pc.strftime(values, format=literal)
    else:
        # Format each distinct truncated time once, then map rows onto them.
        truncated = pc.floor_temporal(values, unit=unit).dictionary_encode()
        labels = pc.strftime(truncated.dictionary, format=literal)
        filled = labels.take(truncated.indices)
    return [pc.fill_null(filled, fallback.strftime(literal))]


def split_partitions(table: pa.Table, pattern: str | None,
                     fallback_time: datetime) -> Iterator[tuple[str, pa.Table]]:
    """Yield ``(relative partition path, rows)`` for every partition present."""
    if not pattern or table.num_rows == 0:
        if table.num_rows:
            yield "", table
        return
    keys = partition_keys(table, pattern.strip("/"), fallback_time)
    encoded = keys.dictionary_encode()
    sorted_table = table if _in_runs(encoded.indices) else table.take(
        pc.sort_indices(encoded.indices))
    counts = pc.value_counts(encoded.indices)
    # value_counts lists values in order of first appearance; walk them sorted.
    runs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    start = 0
    dictionary = encoded.dictionary
    for code, count in runs:
        yield dictionary[code].as_py(), sorted_table.slice(start, count)
        start += count


def _in_runs(codes: pa.Array) -> bool:
    """Whether every partition's rows already sit together, in first-seen order.

    Dictionary codes count up in order of first appearance, so non-decreasing
    codes mean the (stable) sort would return the table as it is: events
    arrive in time order, so an epoch's rows usually are, and the sorted copy
    of the whole epoch (its size again, at the epoch's peak) is skipped.
    """
    if len(codes) < 2:
        return True
    return bool(pc.all(pc.less_equal(codes.slice(0, len(codes) - 1), codes.slice(1))).as_py())

