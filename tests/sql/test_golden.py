"""SQL behaviour, one golden file per case: ``tests/sql/*.sql``.

A case is a SQL file whose leading ``--`` comments say what goes in and what
must come out; the rest of the file is the pipeline's SQL::

    -- What the case shows, in a sentence.
    -- schema: [{"name": "n", "type": "int64"}]      (omit for a schemaless pipeline)
    -- event_time_field: ts                          (optional)
    -- unknown_fields: keep                          (optional: drop, reject, keep)
    -- timeout_seconds: 2                            (optional, default 60)
    -- events:
    -- {"n": 1}
    -- expect:
    -- {"n": 1}
    SELECT n FROM events

or, instead of ``-- expect:``, ``-- error: <code>: <start of the message>``.
Events are decoded as ingest decodes them (``_ingested_at`` is
``INGESTED_AT`` below), then the SQL is checked, planned against the schema
and run in the sandbox as an epoch runs it, with a small memory budget so a
runaway query fails fast. Expected rows are compared in order (give the
query an ORDER BY), timestamps as ISO 8601 text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from beam_pipelines.model.definition import Field
from transforms.decode import arrow_schema, decode_json_lines
from transforms.limits import duckdb_memory_limit
from transforms.sandbox import (
    SqlError,
    check_select,
    plan_sql,
    run_sql,
    sandboxed_connection,
)

CASES = sorted(Path(__file__).parent.glob("*.sql"))
INGESTED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
MEMORY_MB = 64
TIMEOUT_SECONDS = 60.0


@dataclass
class Case:
    sql: str
    schema: list[Field] | None = None
    event_time_field: str | None = None
    unknown_fields: str = "drop"
    events: list[str] = field(default_factory=list)
    expect: list[dict[str, Any]] | None = None
    error: str | None = None
    timeout_seconds: float = TIMEOUT_SECONDS


def parse_case(path: Path) -> Case:
    case = Case(sql="")
    section = None
    sql_lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("--"):
            sql_lines.append(line)
            continue
        text = line[2:].strip()
        key, _, value = text.partition(":")
        if key in ("events", "expect") and not value.strip():
            section = key
            if key == "expect":
                case.expect = []
        elif key == "schema":
            case.schema = [Field(f["name"], f["type"], f.get("required", False))
                           for f in json.loads(value)]
        elif key == "event_time_field":
            case.event_time_field = value.strip()
        elif key == "unknown_fields":
            case.unknown_fields = value.strip()
        elif key == "timeout_seconds":
            case.timeout_seconds = float(value)
        elif key == "error":
            case.error = value.strip()
        elif section == "events" and text:
            case.events.append(text)
        elif section == "expect" and text and case.expect is not None:
            case.expect.append(json.loads(text))
    case.sql = "\n".join(sql_lines).strip()
    if (case.expect is None) == (case.error is None):
        raise ValueError(f"{path.name}: give exactly one of '-- expect:' and '-- error:'")
    return case


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def run_case(case: Case) -> list[dict[str, Any]]:
    decoded = decode_json_lines("\n".join(case.events).encode(), case.schema,
                                case.event_time_field, now=INGESTED_AT,
                                max_record_bytes=1 << 20, unknown_fields=case.unknown_fields)
    assert decoded.rejected == [], [r.public() for r in decoded.rejected]
    check_select(case.sql)
    plan_sql(case.sql, arrow_schema(case.schema, case.unknown_fields), memory_mb=MEMORY_MB)
    con = sandboxed_connection(threads=1, memory_limit=duckdb_memory_limit(MEMORY_MB))
    try:
        result = run_sql(con, case.sql, decoded.table, case.timeout_seconds, memory_mb=MEMORY_MB)
    finally:
        con.close()
    return [{k: _plain(v) for k, v in row.items()} for row in result.to_pylist()]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path) -> None:
    case = parse_case(path)
    if case.error is not None:
        with pytest.raises(SqlError) as info:
            run_case(case)
        assert f"{info.value.code}: {info.value}".startswith(case.error)
    else:
        assert run_case(case) == case.expect


def test_there_are_cases() -> None:
    assert len(CASES) >= 12
