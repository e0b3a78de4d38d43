"""Hostile values through the real server: each bad record is refused by itself,
the good ones are written, and DuckDB reads the files back after stop."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import requests

from tests.control_api.conftest import Api, read_rows, sink_files
from tests.live import query

SCHEMA = [{"name": "id", "type": "int64", "required": True}, {"name": "s", "type": "string"},
          {"name": "ts", "type": "timestamp"}, {"name": "j", "type": "json"}]
ROLL = {"roll": {"interval_seconds": 0.5}}


def _create(api: Api, name: str, **params: Any) -> str:
    params.setdefault("schema", SCHEMA)
    params.setdefault("sink", ROLL)
    data = api.ok("create", {"name": name, **params})
    api.ok("start", {"name": name})
    return str(data["sink"]["uri"])


def _post(api: Api, name: str, body: bytes, content_type: str) -> dict[str, Any]:
    response = requests.post(f"{api.url}/pipelines/{name}/events", data=body, timeout=60,
                             headers=api.headers(**{"Content-Type": content_type}))
    assert response.status_code == 200, response.text
    return dict(response.json()["data"])


def _codes(reply: dict[str, Any]) -> list[tuple[int, str]]:
    return [(r["index"], r["code"]) for r in reply["rejected"]]


def _stop(api: Api, name: str) -> None:
    assert api.ok("stop", {"name": name})["status"] == "stopped"


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def test_too_deep_records_are_rejected_alone_and_too_deep_bodies_are_400(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("deep")
    sink = _create(api, name)
    lines = b'{"id": 1}\n{"id": 2, "j": ' + _deep(10_000) + b'}\n{"id": 3, "j": [[1]]}'
    reply = _post(api, name, lines, "application/x-ndjson")
    assert reply["accepted"] == 2 and _codes(reply) == [(1, "too_deep")]
    array = b'[{"id": 4}, {"id": 5, "j": ' + _deep(10_000) + b'}, {"id": 6, "s": "a,]"}]'
    reply = _post(api, name, array, "application/json")
    assert reply["accepted"] == 2 and _codes(reply) == [(1, "too_deep")]
    # The server is still up (the worker used to segfault on the NDJSON body).
    assert api.get("/healthz").status_code == 200
    deep_body = b'{"operation": "list", "parameters": {"x": ' + _deep(10_000) + b"}}"
    response = requests.post(f"{api.url}/pipeline", data=deep_body, timeout=60,
                             headers=api.headers(**{"Content-Type": "application/json"}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["details"]["field"] == "body"
    _stop(api, name)
    assert sorted(read_rows(sink, "id, s, j")) == [(1, None, None), (3, None, "[[1]]"),
                                                   (4, None, None), (6, "a,]", None)]


def test_invalid_utf8_is_rejected_per_record_with_and_without_a_schema(
        api: Api, unique: Callable[[str], str]) -> None:
    typed, loose = unique("utf8"), unique("utf8_loose")
    typed_sink = _create(api, typed)
    loose_sink = _create(api, loose, schema=None)
    body = b'{"id": 1, "s": "caf\xc3\xa9"}\n{"id": 2, "s": "\xff"}\n{"id": 3, "s": "ok"}'
    for name in (typed, loose):
        reply = _post(api, name, body, "application/x-ndjson")
        assert reply["accepted"] == 2 and _codes(reply) == [(1, "invalid_utf8")]
    _stop(api, typed)
    _stop(api, loose)
    assert sorted(read_rows(typed_sink, "id, s")) == [(1, "caf\u00e9"), (3, "ok")]
    values = sorted(json.loads(row[0])["id"] for row in read_rows(loose_sink, "value"))
    assert values == [1, 3]


def test_times_and_numbers_out_of_range_are_rejected_never_wrapped(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("ranges")
    sink = _create(api, name)
    records = [{"id": 1, "ts": 1767323045000}, {"id": 2, "ts": 9223372036854775807},
               {"id": 3, "ts": 1e300}, {"id": 4, "ts": "10000-01-01T00:00:00Z"},
               {"id": 18446744073709551616}, {"id": 6, "ts": "2026-01-02T03:04:05Z"}]
    body = b"\n".join(json.dumps(r).encode() for r in records)
    for content_type, data in (("application/x-ndjson", body),
                               ("application/json", json.dumps(records).encode())):
        reply = _post(api, name, data, content_type)
        assert reply["accepted"] == 2, reply
        assert _codes(reply) == [(i, "out_of_range") for i in (1, 2, 3, 4)]
    _stop(api, name)
    rows = sorted(read_rows(sink, "id, strftime(ts, '%Y-%m-%d %H:%M:%S')"))
    assert rows == [(1, "2026-01-02 03:04:05"), (1, "2026-01-02 03:04:05"),
                    (6, "2026-01-02 03:04:05"), (6, "2026-01-02 03:04:05")]


def test_unknown_fields_are_dropped_and_named_rejected_or_kept_in_extra(
        api: Api, unique: Callable[[str], str]) -> None:
    bad = api.call("create", {"name": unique("unk"), "schema": SCHEMA, "unknown_fields": "ignore"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "unknown_fields"
    assert "drop, reject, keep" in bad.json()["error"]["message"]
    drop, reject, keep = unique("drop"), unique("reject"), unique("keep")
    drop_sink = _create(api, drop)
    reject_sink = _create(api, reject, unknown_fields="reject")
    # The SQL sees _extra: planning at create already knows the column.
    keep_sink = _create(api, keep, unknown_fields="keep",
                        sql="SELECT id, _extra ->> '$.zz' AS zz, _extra FROM events")
    assert api.ok("get", {"name": keep})["unknown_fields"] == "keep"
    body = b'{"id": 1, "zz": "a"}\n{"id": 2}\n{"id": 3, "yy": [1]}'
    reply = _post(api, drop, body, "application/x-ndjson")
    assert reply["accepted"] == 3 and reply["unknown_fields"] == ["yy", "zz"]
    reply = _post(api, reject, body, "application/x-ndjson")
    assert reply["accepted"] == 1 and _codes(reply) == [(0, "unknown_field"),
                                                        (2, "unknown_field")]
    assert '"zz"' in reply["rejected"][0]["message"]
    reply = _post(api, keep, body, "application/x-ndjson")
    assert reply["accepted"] == 3 and "unknown_fields" not in reply
    for name in (drop, reject, keep):
        _stop(api, name)
    assert sorted(r[0] for r in read_rows(drop_sink, "id")) == [1, 2, 3]
    assert read_rows(reject_sink, "id") == [(2,)]
    kept = sorted(read_rows(keep_sink, "id, zz, _extra"))
    assert [(i, zz) for i, zz, _ in kept] == [(1, "a"), (2, None), (3, None)]
    assert [None if e is None else json.loads(e) for _, _, e in kept] == \
        [{"zz": "a"}, None, {"yy": [1]}]


def test_a_partition_value_too_long_for_a_file_name_is_still_written(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("longpart")
    sink = _create(api, name, sink={**ROLL, "partition_by": "s={s}"})
    long_value = "v" * 300
    body = b"\n".join(json.dumps(r).encode() for r in [
        {"id": 1, "s": long_value}, {"id": 2, "s": "short"}, {"id": 3, "s": "../.."},
        {"id": 4}])
    assert _post(api, name, body, "application/x-ndjson")["accepted"] == 4
    _stop(api, name)
    assert api.ok("get", {"name": name})["status"] == "stopped"
    files = sink_files(sink)
    # The files hold the values themselves; the path holds the bounded segment.
    rows = query(f"SELECT id, s FROM read_parquet({files!r}, hive_partitioning=false)")
    assert sorted(rows) == [(1, long_value), (2, "short"), (3, "../.."), (4, None)]
    assert len(files) == 4
    for path in files:
        assert path.startswith(sink.removeprefix("file://"))
        assert all(len(part.encode()) <= 255 for part in path.split("/"))
