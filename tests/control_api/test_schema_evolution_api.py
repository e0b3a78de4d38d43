"""Additive schema evolution over HTTP on the real server: refusals, a widened schema
landing as a column, and the dead-letter flow of #9 (reject an unknown field, list,
widen the schema, replay: each accepted once, in the lake once), read back with DuckDB.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.control_api.conftest import Api, read_rows, sink_files, wait_for

SCHEMA: list[dict[str, Any]] = [{"name": "n", "type": "int64", "required": True},
                                {"name": "s", "type": "string"}]
WIDER: list[dict[str, Any]] = [{**SCHEMA[0]}, {**SCHEMA[1], "required": False},
         {"name": "x", "type": "float64", "required": False}]
ROLL = {"roll": {"interval_seconds": 0.5}}


def test_a_change_that_is_not_additive_is_a_validation_error_naming_the_field(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("strict")
    api.ok("create", {"name": name, "schema": SCHEMA, "sink": ROLL})
    cases = [([SCHEMA[0]], "schema", "removed"),
             ([SCHEMA[0], {"name": "s", "type": "json"}], "schema[1].type", "changes type"),
             ([*SCHEMA, {"name": "x", "type": "float64", "required": True}],
              "schema[2].required", "new field 'x' is required")]
    for schema, field, reason in cases:
        response = api.call("transform", {"name": name, "schema": schema})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and error["details"]["field"] == field
        assert reason in error["message"]
    assert api.ok("get", {"name": name})["version"] == 1
    missing = api.call("transform", {"name": name})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "VALIDATION_ERROR"


def test_widen_the_schema_and_replay_the_unknown_field_dead_letters_exactly_once(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("widen")
    created = api.ok("create", {"name": name, "schema": SCHEMA, "unknown_fields": "reject",
                                "sink": ROLL})
    sink = created["sink"]["uri"]
    api.ok("start", {"name": name})
    events: list[dict[str, Any]] = [{"n": n, "x": n / 4} if n % 2 else {"n": n, "s": "a"}
                                    for n in range(40)]
    response = api.ndjson(name, events)
    assert response.status_code == 200, response.text
    reply = response.json()["data"]
    assert reply["accepted"] == 20 and {r["code"] for r in reply["rejected"]} == {"unknown_field"}
    wait_for(lambda: len(read_rows(sink)) == 20, message="the accepted events' files")
    first_files = sink_files(sink)

    listed = api.ok("dead_letters", {"name": name, "code": "unknown_field"})["dead_letters"]
    assert sorted(json.loads(d["record"])["n"] for d in listed) == list(range(1, 40, 2))

    widened = api.ok("transform", {"name": name, "schema": WIDER})
    assert widened["version"] == 2
    assert [c["name"] for c in widened["output_schema"]][:3] == ["n", "s", "x"]
    assert api.ok("get", {"name": name})["schema"] == WIDER
    # every API process decodes with the new schema from now on
    for first in range(100, 140, 10):
        more = api.ndjson(name, [{"n": n, "x": 1.5} for n in range(first, first + 10)])
        assert more.json()["data"] == {"accepted": 10, "rejected": []}

    replayed = api.ok("replay_dead_letters", {"name": name, "code": "unknown_field"})
    assert replayed == {"accepted": 20, "rejected": []}
    assert api.ok("replay_dead_letters", {"name": name}) == {"accepted": 0, "rejected": []}
    assert api.ok("dead_letters", {"name": name})["dead_letters"] == []

    stopped = api.ok("stop", {"name": name})
    assert stopped["status"] == "stopped"
    rows = sorted(read_rows(sink, "n, x"))
    assert rows == sorted([(n, n / 4 if n % 2 else None) for n in range(40)]
                          + [(n, 1.5) for n in range(100, 140)])
    # the files written before the change keep their columns
    for path in first_files:
        assert _columns(path) == ["n", "s", "_ingested_at", "_event_time"]
    monitor = api.ok("monitor", {"name": name})
    assert monitor["events_in"] == 80 and monitor["events_out"] == 80


def _columns(path: str) -> list[str]:
    import duckdb

    return [c[0] for c in duckdb.connect().execute("DESCRIBE SELECT * FROM read_parquet(?)",
                                                   [path]).fetchall()]
