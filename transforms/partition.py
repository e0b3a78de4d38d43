"""Split an Arrow table into its partitions: ``dt=%Y-%m-%d/country={country}``.

Time patterns are filled from ``_event_time`` when the table has it, else
from one fallback time (the epoch's planned time, so a re-run epoch lands
in the same place). ``{column}`` values are escaped Hive-style so no value
can leave the sink prefix: ``/``, ``\\``, ``%``, ``=`` and control
characters are percent-encoded, ``.`` and ``..`` become ``%2E`` runs, and
null or empty becomes ``__null__``. All of it is vectorized with pyarrow
compute; the number of Python steps is the number of partitions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["NULL_PARTITION", "escape_partition_values", "split_partitions"]

NULL_PARTITION = "__null__"
_COLUMN = re.compile(r"\{([^{}]*)\}")
_ESCAPES = [("%", "%25"), ("/", "%2F"), ("\\", "%5C"), ("=", "%3D"), (":", "%3A"),
            ("#", "%23"), ("?", "%3F"), ("*", "%2A"), ('"', "%22"), ("<", "%3C"),
            (">", "%3E"), ("|", "%7C"), ("\n", "%0A"), ("\r", "%0D"), ("\t", "%09"),
            ("\x00", "%00")]
_EVENT_TIME = "_event_time"


def escape_partition_values(values: pa.Array) -> pa.Array:
    """Hive-escape a column's values for use as one path segment."""
    text = values.cast(pa.string()) if not pa.types.is_string(values.type) else values
    for raw, encoded in _ESCAPES:
        text = pc.replace_substring(text, raw, encoded)
    # A segment made only of dots would walk up or stay put: encode it.
    only_dots = pc.match_substring_regex(text, r"^\.+$")
    text = pc.if_else(only_dots, pc.replace_substring(text, ".", "%2E"), text)
    empty = pc.or_kleene(pc.is_null(text), pc.equal(text, ""))
    return pc.if_else(empty, NULL_PARTITION, text)


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
    order = pc.sort_indices(encoded.indices)
    sorted_table = table.take(order)
    counts = pc.value_counts(encoded.indices)
    # value_counts lists values in order of first appearance; walk them sorted.
    runs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    start = 0
    dictionary = encoded.dictionary
    for code, count in runs:
        yield dictionary[code].as_py(), sorted_table.slice(start, count)
        start += count
