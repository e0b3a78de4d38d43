"""The one workload every contender runs, and how its output is checked.

The transformation, stated once in SQL (:data:`TRANSFORM_SQL`, DuckDB's
dialect, over a relation named ``events`` as in pipeline.do) and once as the
equivalent plain Python (:func:`keep_event`, :func:`transform_event`) for the
idiomatic Beam contender:

* keep events with ``amount > 10``;
* add ``country_uc = upper(country)``;
* add ``amount_gross = amount * 1.2``;
* parse ``ts`` (ISO-8601, UTC with a ``Z`` suffix) into a timestamp;
* partition by event day: ``dt = 'YYYY-MM-DD'`` of ``ts``, written Hive
  style as ``<out>/dt=YYYY-MM-DD/*.parquet`` with zstd compression. ``dt``
  lives in the directory name, not in the files (DuckDB's default).

:func:`expected_summary` computes, with DuckDB straight from the NDJSON, what
a correct output must contain; :func:`output_summary` reads a contender's
Parquet output back the same way; :func:`check_output` compares them and
raises :class:`OutputMismatch` on any difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

__all__ = [
    "AMOUNT_THRESHOLD",
    "GROSS_FACTOR",
    "INPUT_COLUMNS",
    "OUTPUT_SCHEMA",
    "PARTITION_COLUMN",
    "TRANSFORM_SQL",
    "OutputMismatch",
    "Summary",
    "check_output",
    "duckdb_source",
    "expected_summary",
    "keep_event",
    "output_summary",
    "transform_event",
]

AMOUNT_THRESHOLD = 10
GROSS_FACTOR = 1.2
PARTITION_COLUMN = "dt"

# Types of the NDJSON fields, for read_ndjson(columns=...). ``ts`` is read as
# text and parsed by the transformation, as every contender has to.
INPUT_COLUMNS: dict[str, str] = {
    "user_id": "BIGINT",
    "country": "VARCHAR",
    "event": "VARCHAR",
    "amount": "DOUBLE",
    "ts": "VARCHAR",
    "session": "VARCHAR",
}

# The transformation in DuckDB SQL, one SELECT over the relation ``events``.
TRANSFORM_SQL = f"""
SELECT
    user_id,
    country,
    upper(country)                                AS country_uc,
    event,
    amount,
    amount * {GROSS_FACTOR}                       AS amount_gross,
    CAST(ts AS TIMESTAMP)                         AS ts,
    session,
    strftime(CAST(ts AS TIMESTAMP), '%Y-%m-%d')   AS {PARTITION_COLUMN}
FROM events
WHERE amount > {AMOUNT_THRESHOLD}
""".strip()

# Columns of each output Parquet file (the partition column is in the path).
OUTPUT_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("country", pa.string()),
        ("country_uc", pa.string()),
        ("event", pa.string()),
        ("amount", pa.float64()),
        ("amount_gross", pa.float64()),
        ("ts", pa.timestamp("us")),
        ("session", pa.string()),
    ]
)


# --- the same transformation in plain Python, one event (dict) at a time ---


def keep_event(event: dict[str, Any]) -> bool:
    """Python twin of ``WHERE amount > 10``."""
    return event["amount"] > AMOUNT_THRESHOLD


def transform_event(event: dict[str, Any]) -> dict[str, Any]:
    """Python twin of the SELECT list: returns a new dict including ``dt``."""
    # fromisoformat() accepts a "Z" suffix only from Python 3.11 on.
    iso = event["ts"].replace("Z", "+00:00")
    ts = datetime.fromisoformat(iso).astimezone(timezone.utc).replace(tzinfo=None)
    return {
        "user_id": event["user_id"],
        "country": event["country"],
        "country_uc": event["country"].upper(),
        "event": event["event"],
        "amount": event["amount"],
        "amount_gross": event["amount"] * GROSS_FACTOR,
        "ts": ts,
        "session": event["session"],
        PARTITION_COLUMN: ts.strftime("%Y-%m-%d"),
    }


# --- reading the input and checking outputs ---


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duckdb_source(dataset_path: str | Path) -> str:
    """A DuckDB table expression reading the NDJSON file with fixed column types."""
    columns = ", ".join(f"{_sql_literal(k)}: {_sql_literal(v)}" for k, v in INPUT_COLUMNS.items())
    return (
        f"read_ndjson({_sql_literal(str(dataset_path))}, columns = {{{columns}}}, "
        "format = 'newline_delimited')"
    )


@dataclass(frozen=True)
class Summary:
    """What an output is checked on: rows per partition, checksums, bad rows."""

    rows_by_partition: dict[str, int]
    amount_gross_sum: float = 0.0
    ts_min: str | None = None
    ts_max: str | None = None
    bad_rows: int = 0  # rows in the wrong partition or with a wrong country_uc
    files: int = 0
    bytes: int = 0
    columns: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_partition.values())


class OutputMismatch(AssertionError):
    """A contender wrote different data than the workload requires."""


def _summarise(con: duckdb.DuckDBPyConnection, relation_sql: str) -> dict[str, Any]:
    rows = con.sql(
        f"""
        SELECT {PARTITION_COLUMN}, count(*), sum(amount_gross),
               CAST(min(ts) AS VARCHAR), CAST(max(ts) AS VARCHAR),
               count(*) FILTER (WHERE strftime(ts, '%Y-%m-%d') <> {PARTITION_COLUMN}
                                   OR country_uc <> upper(country))
        FROM ({relation_sql})
        GROUP BY ALL ORDER BY 1
        """
    ).fetchall()
    return {
        "rows_by_partition": {str(row[0]): int(row[1]) for row in rows},
        "amount_gross_sum": math.fsum(float(row[2] or 0.0) for row in rows),
        "ts_min": min((row[3] for row in rows), default=None),
        "ts_max": max((row[4] for row in rows), default=None),
        "bad_rows": sum(int(row[5]) for row in rows),
    }


def expected_summary(dataset_path: str | Path) -> Summary:
    """Summary of the output a correct run must produce, computed by DuckDB."""
    con = duckdb.connect()
    try:
        query = f"WITH events AS (SELECT * FROM {duckdb_source(dataset_path)}) {TRANSFORM_SQL}"
        return Summary(**_summarise(con, query))
    finally:
        con.close()


def output_summary(output_dir: str | Path) -> Summary:
    """Read a contender's Hive-partitioned Parquet output back and summarise it."""
    output_dir = Path(output_dir)
    files = sorted(output_dir.glob(f"{PARTITION_COLUMN}=*/*.parquet"))
    if not files:
        return Summary({})
    con = duckdb.connect()
    try:
        pattern = _sql_literal(str(output_dir / f"{PARTITION_COLUMN}=*" / "*.parquet"))
        query = f"SELECT * FROM read_parquet({pattern}, hive_partitioning = true)"
        summary = _summarise(con, query)
        columns = [row[0] for row in con.sql(f"DESCRIBE {query}").fetchall()]
    finally:
        con.close()
    return Summary(
        **summary,
        files=len(files),
        bytes=sum(f.stat().st_size for f in files),
        columns=columns,
    )


def check_output(name: str, expected: Summary, actual: Summary) -> None:
    """Raise :class:`OutputMismatch` unless ``actual`` matches ``expected``."""
    problems = []
    if actual.rows_by_partition != expected.rows_by_partition:
        problems.append(
            f"rows per partition {actual.rows_by_partition} != expected {expected.rows_by_partition}"
        )
    if not math.isclose(actual.amount_gross_sum, expected.amount_gross_sum, rel_tol=1e-9):
        problems.append(
            f"sum(amount_gross) {actual.amount_gross_sum!r} != expected {expected.amount_gross_sum!r}"
        )
    if (actual.ts_min, actual.ts_max) != (expected.ts_min, expected.ts_max):
        problems.append(
            f"ts range {actual.ts_min}..{actual.ts_max} != expected {expected.ts_min}..{expected.ts_max}"
        )
    if actual.bad_rows:
        problems.append(f"{actual.bad_rows} rows in the wrong partition or with a wrong country_uc")
    missing = [c for c in OUTPUT_SCHEMA.names if c not in actual.columns]
    if missing:
        problems.append(f"missing columns {missing}")
    if problems:
        raise OutputMismatch(f"{name}: wrong output: " + "; ".join(problems))
