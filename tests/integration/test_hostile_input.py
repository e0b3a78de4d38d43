"""Hostile input against the real server: every attack of issue #6 and generated variants.

One server for the module, with small limits (256 KiB bodies, JSON nesting 32).
Each case asserts the documented status and code (per record: the indexes of
the bad records, the good ones counted accepted), then that the server is
healthy (``/healthz`` 200 and a normal ingest works). The last test stops
every pipeline and reads the lake back with DuckDB: every acknowledged event
once, no refused event, every file readable. Outcomes go to
``tests/artifacts/hostile_input.json`` (``scripts/outcomes_table.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ADMIN_KEY
from tests.integration.hostile import (
    AROUND,
    ENCODERS,
    SEED,
    assert_error,
    assert_per_record,
    bomb,
    chunks,
    extra_fields,
    invalid_utf8,
    nested,
    observed,
    partition_values,
    sized_records,
)
from tests.integration.lake import Ledger, lake_files, ndjson, read_lake, send, sink_dir
from tests.integration.outcomes import OutcomeLog
from tests.live import LiveServer

LIMIT = 262_144  # PIPELINE_DO_MAX_BODY_BYTES
DEPTH = 32  # PIPELINE_DO_MAX_JSON_DEPTH
NDJSON, JSON = "application/x-ndjson", "application/json"
SCHEMA = [{"name": "id", "type": "int64", "required": True}, {"name": "s", "type": "string"},
          {"name": "j", "type": "json"}]
UNSTRUCTURED_ID = "CAST(json_extract(value, '$.id') AS BIGINT)"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("hostile")
    allowed = tmp_path_factory.mktemp("allowed_root")
    live = LiveServer(str(data_dir), api_key=ADMIN_KEY, args=("--job-workers", "1"), extra_env={
        "PIPELINE_DO_MAX_BODY_BYTES": str(LIMIT), "PIPELINE_DO_MAX_JSON_DEPTH": str(DEPTH),
        "PIPELINE_DO_LOCAL_SINK_ROOTS": str(allowed)})
    live.start()
    try:
        yield live
    finally:
        live.kill()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
def allowed_root(server: LiveServer) -> str:
    return server.extra_env["PIPELINE_DO_LOCAL_SINK_ROOTS"]


# -- helpers ---------------------------------------------------------------------------


def _schema_pipeline(server: LiveServer, ledger: Ledger, name: str, **extra: Any) -> str:
    ledger.pipeline(server, name, {"schema": SCHEMA, **extra})
    return name


def _raw_pipeline(server: LiveServer, ledger: Ledger, name: str) -> str:
    ledger.pipeline(server, name, {}, id_sql=UNSTRUCTURED_ID)
    return name


def _assert_healthy(server: LiveServer, ledger: Ledger) -> None:
    """``/healthz`` answers 200 and a normal ingest is accepted whole."""
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    name = _schema_pipeline(server, ledger, "canary")
    ids = ledger.ids(2)
    status, body = send(server, f"/pipelines/{name}/events", ndjson({"id": i, "s": "ok"} for i in ids))
    assert status == 200 and body["data"]["accepted"] == 2, body
    ledger.ack("server healthy after each attack (canary)", ids)


# -- bodies: limits hold for Content-Length and chunked bodies ------------------------


ROUTES = {"ndjson": (b"", b"\n", b"\n"), "json array": (b"[", b",", b"]"),
          "/pipeline ingest": (b'{"operation":"ingest","parameters":{"name":"bodies","events":[',
                               b",", b"]}}")}
SIZES = {"half the limit": LIMIT // 2, "limit - 1": LIMIT - 1, "limit + 1": LIMIT + 1,
         "4x the limit": 4 * LIMIT, "10 MB": 10_000_000}
BODY_CASES = [(route, size, transfer) for route in ROUTES for size in SIZES
              for transfer in ("Content-Length", "chunked")
              if size != "10 MB" or route == "ndjson"]


@pytest.mark.parametrize(("route", "size", "transfer"), BODY_CASES)
def test_body_size_limit_holds_for_every_transfer(server: LiveServer, ledger: Ledger,
                                                  outcomes: OutcomeLog, route: str, size: str,
                                                  transfer: str) -> None:
    name = _schema_pipeline(server, ledger, "bodies")
    nbytes = SIZES[size]
    ids = ledger.ids(max(1, nbytes // 1024))
    head, sep, tail = ROUTES[route]
    body = sized_records(ids, nbytes, head, sep, tail)
    path = "/pipeline" if route == "/pipeline ingest" else f"/pipelines/{name}/events"
    status, reply = send(server, path, chunks(body) if transfer == "chunked" else body,
                         content_type=NDJSON if route == "ndjson" else JSON)
    _assert_whole_body(server, ledger, outcomes, f"body {size}, {route}, {transfer}",
                       nbytes > LIMIT, status, reply, ids)


# -- encodings: gzip and zstd decoded under the limit, anything else 415 ---------------


ENCODING_CASES = [(enc, size, "Content-Length") for enc in ENCODERS
                  for size in ("20 kB", "limit - 1", "limit + 1")] + [
    (enc, "64 MB bomb", transfer) for enc in ("gzip", "zstd")
    for transfer in ("Content-Length", "chunked")]


@pytest.mark.parametrize(("encoding", "size", "transfer"), ENCODING_CASES)
def test_compressed_bodies_are_limited_by_their_decoded_size(
        server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, encoding: str, size: str,
        transfer: str) -> None:
    name = _schema_pipeline(server, ledger, "encodings")
    if size == "64 MB bomb":
        ids = ledger.ids(1)
        wire = bomb(encoding)
        assert len(wire) < LIMIT  # only the decoded size is over the limit
    else:
        nbytes = {"20 kB": 20_000, "limit - 1": LIMIT - 1, "limit + 1": LIMIT + 1}[size]
        ids = ledger.ids(nbytes // 1024)
        wire = ENCODERS[encoding](sized_records(ids, nbytes, b"", b"\n", b"\n"))
    status, reply = send(server, f"/pipelines/{name}/events",
                         chunks(wire) if transfer == "chunked" else wire,
                         headers={"Content-Encoding": encoding})
    _assert_whole_body(server, ledger, outcomes,
                       f"Content-Encoding {encoding}, decoded {size}, {transfer}",
                       size in ("limit + 1", "64 MB bomb"), status, reply, ids)


def _assert_whole_body(server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, case: str,
                       over: bool, status: int | None, reply: dict[str, Any],
                       ids: list[int]) -> None:
    """A body over the limit is a 413 and none of its events count; one within it is
    accepted whole. Either way the server stays healthy."""
    outcomes.record(case, "413 PAYLOAD_TOO_LARGE" if over else "200, all accepted",
                    observed(status, reply))
    if over:
        ledger.refuse(ids)
        assert_error(status, reply, 413, "PAYLOAD_TOO_LARGE")
    else:
        assert_per_record(status, reply, ids, {}, ledger, case)
    _assert_healthy(server, ledger)


@pytest.mark.parametrize("encoding", ["br", "compress", "deflate-raw", "x-garbage", "gzip;q=0.5"])
def test_unknown_content_encoding_is_415_naming_the_allowed_ones(
        server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, encoding: str) -> None:
    name = _schema_pipeline(server, ledger, "encodings")
    ids = ledger.ids(3)
    ledger.refuse(ids)
    status, reply = send(server, f"/pipelines/{name}/events", ndjson({"id": i} for i in ids),
                         headers={"Content-Encoding": encoding})
    outcomes.record(f"Content-Encoding {encoding}", "415 UNSUPPORTED_MEDIA_TYPE, allowed listed",
                    observed(status, reply))
    error = assert_error(status, reply, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "gzip" in error["details"]["allowed"], error
    _assert_healthy(server, ledger)


@pytest.mark.parametrize("damage", ["not gzip at all", "truncated gzip", "not zstd at all"])
def test_a_corrupt_compressed_body_is_a_clean_client_error(
        server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, damage: str) -> None:
    name = _schema_pipeline(server, ledger, "encodings")
    ids = ledger.ids(50)
    ledger.refuse(ids)
    plain = ndjson({"id": i, "s": "y" * 50} for i in ids)
    encoding = "zstd" if "zstd" in damage else "gzip"
    wire = {"not gzip at all": plain, "truncated gzip": gzip.compress(plain)[:-40],
            "not zstd at all": random.Random(SEED).randbytes(500)}[damage]
    status, reply = send(server, f"/pipelines/{name}/events", wire,
                         headers={"Content-Encoding": encoding})
    outcomes.record(f"Content-Encoding {encoding}, {damage}", "4xx with a code, nothing accepted",
                    observed(status, reply))
    assert status is not None and 400 <= status < 500, reply
    assert reply["success"] is False and reply["error"]["code"], reply
    _assert_healthy(server, ledger)


# -- nesting depth: per record on the fast path, 400 on /pipeline ----------------------


DEPTH_CASES = [(kind, container, depth, ctype) for kind in ("schema json field", "unstructured")
               for container in ("arrays", "objects") for depth in (DEPTH - 4, DEPTH + 2, 10_000)
               for ctype in (NDJSON, JSON)]


@pytest.mark.parametrize(("kind", "container", "depth", "content_type"), DEPTH_CASES)
def test_nesting_past_the_limit_is_rejected_per_record(
        server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, kind: str, container: str,
        depth: int, content_type: str) -> None:
    name = (_schema_pipeline(server, ledger, "depth_schema") if kind == "schema json field"
            else _raw_pipeline(server, ledger, "depth_raw"))
    ids = ledger.ids(5)
    bad = random.Random(f"{SEED}{depth}{container}").randrange(5)
    field = "j" if kind == "schema json field" else "deep"
    records = [f'{{"id":{i},"s":"ok","{field}":{nested(container, depth) if k == bad else "[1]"}}}'
               for k, i in enumerate(ids)]
    body = ("[" + ",".join(records) + "]" if content_type == JSON
            else "\n".join(records) + "\n").encode()
    status, reply = send(server, f"/pipelines/{name}/events", body, content_type=content_type)
    case = f"{container} {depth} deep in a {kind}, {content_type.split('/')[1]}"
    too_deep = depth > DEPTH
    outcomes.record(case, "per record: too_deep, the others accepted" if too_deep
                    else "200, all accepted", observed(status, reply))
    assert_per_record(status, reply, ids, {bad: {"too_deep"}} if too_deep else {}, ledger, case)
    _assert_healthy(server, ledger)


PIPELINE_DEPTH_CASES = [(where, container, depth) for where in ("whole body", "parameters",
                                                                "ingest events")
                        for container in ("arrays", "objects") for depth in (10_000, 40_000)]


@pytest.mark.parametrize(("where", "container", "depth"), PIPELINE_DEPTH_CASES)
def test_a_too_deep_pipeline_body_is_400_on_body(server: LiveServer, ledger: Ledger,
                                                 outcomes: OutcomeLog, where: str,
                                                 container: str, depth: int) -> None:
    deep = nested(container, depth)
    [event_id] = ledger.ids(1)
    ledger.refuse([event_id])
    body = {"whole body": deep,
            "parameters": f'{{"operation":"create","parameters":{{"name":"deep","schema":{deep}}}}}',
            "ingest events": '{"operation":"ingest","parameters":{"name":"depth_schema","events":'
                             f'[{{"id":{event_id},"j":{deep}}}]}}'}[where]
    _schema_pipeline(server, ledger, "depth_schema")
    status, reply = send(server, "/pipeline", body.encode(), content_type=JSON)
    outcomes.record(f"/pipeline body, {container} {depth} deep in {where}",
                    "400 VALIDATION_ERROR on body", observed(status, reply))
    assert_error(status, reply, 400, "VALIDATION_ERROR", field="body")
    assert server.call("get", {"name": "deep"}).status_code == 404
    _assert_healthy(server, ledger)


# -- invalid UTF-8: generated byte patterns, rejected per record -----------------------


UTF8_PATTERNS = invalid_utf8(random.Random(SEED))
UTF8_PLACES = ("schema string field", "schema json field", "unstructured value", "unstructured key")


@pytest.mark.parametrize("place", UTF8_PLACES)
@pytest.mark.parametrize("pattern", sorted(UTF8_PATTERNS))
def test_invalid_utf8_is_rejected_per_record(server: LiveServer, ledger: Ledger,
                                             outcomes: OutcomeLog, pattern: str, place: str) -> None:
    rng = random.Random(f"{SEED}{pattern}{place}")
    raw = (rng.choice(AROUND).encode() + UTF8_PATTERNS[pattern] + rng.choice(AROUND).encode())
    schema = place.startswith("schema")
    name = (_schema_pipeline(server, ledger, "utf8_schema") if schema
            else _raw_pipeline(server, ledger, "utf8_raw"))
    ids = ledger.ids(6)
    bad = rng.randrange(6)
    lines = []
    for k, i in enumerate(ids):
        good = json.dumps({"id": i, "s": "gut é 😀", "j": {"k": "v"}}, ensure_ascii=False).encode()
        if k != bad:
            lines.append(good)
        elif place in ("schema string field", "unstructured value"):
            lines.append(b'{"id":%d,"s":"' % i + raw + b'"}')
        elif place == "schema json field":
            lines.append(b'{"id":%d,"j":{"k":"' % i + raw + b'"}}')
        else:
            lines.append(b'{"id":%d,"' % i + raw + b'":1}')
    status, reply = send(server, f"/pipelines/{name}/events", b"\n".join(lines) + b"\n")
    case = f"invalid UTF-8 ({pattern}) in {place}"
    outcomes.record(case, "per record: invalid_utf8, the others accepted", observed(status, reply))
    assert_per_record(status, reply, ids, {bad: {"invalid_utf8"}}, ledger, case)
    _assert_healthy(server, ledger)


@pytest.mark.parametrize("content_type", [NDJSON, JSON])
@pytest.mark.parametrize("kind", ["schema", "unstructured"])
def test_an_escaped_lone_surrogate_never_reaches_the_lake_unreadable(
        server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, kind: str,
        content_type: str) -> None:
    """``"\\ud800"`` is JSON text no UTF-8 string can hold: rejected (as invalid UTF-8
    or a parse failure), or replaced if the server chooses; either way the lake stays
    readable (checked at the end)."""
    name = (_schema_pipeline(server, ledger, "utf8_schema") if kind == "schema"
            else _raw_pipeline(server, ledger, "utf8_raw"))
    ids = ledger.ids(4)
    surrogate = '"x\\ud800y"'  # the JSON text "x\ud800y", a lone high surrogate escaped
    records = [f'{{"id":{i},"s":{surrogate if k == 2 else json.dumps("a")}}}' for k, i in enumerate(ids)]
    body = ("[" + ",".join(records) + "]" if content_type == JSON else "\n".join(records)).encode()
    status, reply = send(server, f"/pipelines/{name}/events", body, content_type=content_type)
    case = f"escaped lone surrogate in a {kind} pipeline, {content_type.split('/')[1]}"
    outcomes.record(case, "invalid_utf8 or parse_failure (or replaced), the others accepted",
                    observed(status, reply))
    assert status == 200, reply
    replaced = reply["data"]["rejected"] == []
    assert_per_record(status, reply, ids, {} if replaced else {2: {"invalid_utf8", "parse_failure"}},
                      ledger, case)
    _assert_healthy(server, ledger)


# -- values out of range ---------------------------------------------------------------


BAD_TIMES = {"int64 max": "9223372036854775807", "int64 min": "-9223372036854775808",
             "2^64": "18446744073709551616", "1e19": "1e19", "1e300": "1e300",
             "-1e300": "-1e300", "NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity",
             "year +300000": '"+300000-01-01T00:00:00Z"'}
# Numbers JSON can carry; NaN, Infinity and odd ISO strings may also be parse failures.
STRICTLY_OUT_OF_RANGE = {"int64 max", "int64 min", "2^64", "1e19", "1e300", "-1e300"}
GOOD_TIMES = {"0": (0, 0), "-1": (-1, -1), "a day before 1970": (-86_400_000, -86_400_000),
              "1.7e12 float": (1.7e12, 1_700_000_000_000), "year 2100": (4102444800000, 4102444800000),
              "leap day ISO": ("2024-02-29T12:00:00.123Z", 1709208000123)}


@pytest.mark.parametrize("content_type", [NDJSON, JSON])
@pytest.mark.parametrize("value", sorted(BAD_TIMES))
def test_timestamps_out_of_range_are_rejected_per_record(
        server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, value: str,
        content_type: str) -> None:
    ledger.pipeline(server, "times", {"schema": [{"name": "id", "type": "int64", "required": True},
                                                 {"name": "ts", "type": "timestamp", "required": True}],
                                      "event_time_field": "ts"}, value_sql="epoch_ms(ts)",
                    normalize=lambda row: row[0])
    ids = ledger.ids(5)
    bad = random.Random(f"{SEED}{value}").randrange(5)
    good = list(GOOD_TIMES.values())
    records = [f'{{"id":{i},"ts":{BAD_TIMES[value] if k == bad else json.dumps(good[k][0])}}}'
               for k, i in enumerate(ids)]
    for k, i in enumerate(ids):
        if k != bad:
            ledger.values[i] = good[k][1]
    body = ("[" + ",".join(records) + "]" if content_type == JSON else "\n".join(records)).encode()
    status, reply = send(server, "/pipelines/times/events", body, content_type=content_type)
    case = f"timestamp {value}, {content_type.split('/')[1]}"
    codes = {"out_of_range"} if value in STRICTLY_OUT_OF_RANGE else {
        "out_of_range", "parse_failure", "type_mismatch"}
    outcomes.record(case, "per record: " + " or ".join(sorted(codes)), observed(status, reply))
    assert_per_record(status, reply, ids, {bad: codes}, ledger, case)
    _assert_healthy(server, ledger)


def test_timestamps_in_range_are_stored_exactly(server: LiveServer, ledger: Ledger,
                                                outcomes: OutcomeLog) -> None:
    ids = ledger.ids(len(GOOD_TIMES))
    records = [{"id": i, "ts": sent} for i, (sent, _ms) in zip(ids, GOOD_TIMES.values())]
    ledger.values.update((i, ms) for i, (_sent, ms) in zip(ids, GOOD_TIMES.values()))
    status, reply = send(server, "/pipelines/times/events", ndjson(records))
    case = "timestamps in range (" + ", ".join(GOOD_TIMES) + ")"
    outcomes.record(case, "200, stored to the millisecond", observed(status, reply))
    assert_per_record(status, reply, ids, {}, ledger, case)


BAD_NUMBERS = {"int64 field 2^63": ("x", "9223372036854775808"),
               "int64 field -2^63-1": ("x", "-9223372036854775809"),
               "int64 field 1e30": ("x", "1e30"),
               "float64 field 1e400": ("f", "1e400"), "float64 field -1e400": ("f", "-1e400")}


@pytest.mark.parametrize("value", sorted(BAD_NUMBERS))
def test_numbers_that_do_not_fit_are_rejected_per_record(
        server: LiveServer, ledger: Ledger, outcomes: OutcomeLog, value: str) -> None:
    ledger.pipeline(server, "numbers", {"schema": [{"name": "id", "type": "int64", "required": True},
                                                   {"name": "x", "type": "int64"},
                                                   {"name": "f", "type": "float64"}]},
                    value_sql="x, f")
    ids = ledger.ids(4)
    extremes = [(2**63 - 1, 1.7976931348623157e308), (-(2**63), 5e-324), (0, -0.0), (7, -2.5)]
    field, literal = BAD_NUMBERS[value]
    records = [f'{{"id":{i},"x":{x},"f":{f!r}}}' for i, (x, f) in zip(ids, extremes)]
    records[1] = f'{{"id":{ids[1]},"{field}":{literal}}}'
    ledger.values.update(zip(ids, extremes))
    # Were the bad record accepted anyway, the lake would have to hold what was sent.
    sent = json.loads(literal)
    ledger.values[ids[1]] = (sent, None) if field == "x" else (None, sent)
    status, reply = send(server, "/pipelines/numbers/events", "\n".join(records).encode())
    case = f"number {value}"
    codes = {"out_of_range"} if field == "f" or "e" not in literal else {"out_of_range",
                                                                         "type_mismatch"}
    outcomes.record(case, "per record: out_of_range; extremes that fit stored exactly",
                    observed(status, reply))
    assert_per_record(status, reply, ids, {1: codes}, ledger, case)
    _assert_healthy(server, ledger)


# -- unknown fields under each policy --------------------------------------------------


POLICIES = ("default", "drop", "reject", "keep")
EXTRA_VARIANTS = ("plain", "unicode name", "nested value", "200-char name", "several")


@pytest.mark.parametrize("content_type", [NDJSON, JSON])
@pytest.mark.parametrize("variant", EXTRA_VARIANTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_unknown_fields_follow_the_schema_policy(server: LiveServer, ledger: Ledger,
                                                 outcomes: OutcomeLog, policy: str, variant: str,
                                                 content_type: str) -> None:
    definition: dict[str, Any] = {"schema": SCHEMA[:2]}
    if policy != "default":
        definition["unknown_fields"] = policy
    name = f"unknown_{policy}"
    if policy == "keep":
        ledger.pipeline(server, name, definition, value_sql="_extra",
                        normalize=lambda row: json.loads(row[0]) if row[0] else {})
    else:
        ledger.pipeline(server, name, definition)
    rng = random.Random(f"{SEED}{policy}{variant}{content_type}")
    ids = ledger.ids(5)
    with_extras = set(rng.sample(range(5), 2))
    extras = extra_fields(variant, rng)
    records = [{"id": i, "s": "ok", **(extras if k in with_extras else {})} for k, i in enumerate(ids)]
    if policy == "keep":
        ledger.values.update((i, extras if k in with_extras else {}) for k, i in enumerate(ids))
    body = (json.dumps(records, ensure_ascii=False).encode() if content_type == JSON
            else ndjson(records))
    status, reply = send(server, f"/pipelines/{name}/events", body, content_type=content_type)
    case = f"unknown fields ({variant}), policy {policy}, {content_type.split('/')[1]}"
    expected = {"default": "200, all accepted, unknown_fields named", "drop": "200, all accepted, "
                "unknown_fields named", "reject": "per record: unknown_field",
                "keep": "200, all accepted, kept in _extra"}[policy]
    outcomes.record(case, expected, observed(status, reply))
    assert_per_record(status, reply, ids, {k: {"unknown_field"} for k in with_extras}
                      if policy == "reject" else {}, ledger, case)
    if policy in ("default", "drop"):
        assert set(reply["data"].get("unknown_fields", [])) == set(extras), reply["data"]
    _assert_healthy(server, ledger)


# -- partition values the filesystem cannot hold as they are ---------------------------


PARTITION_VALUES = partition_values()


@pytest.mark.parametrize("label", list(PARTITION_VALUES))
def test_partition_values_never_block_or_escape(server: LiveServer, ledger: Ledger,
                                                outcomes: OutcomeLog, label: str) -> None:
    """Each odd value is accepted (and written under a bounded, escaped name) or
    rejected per record; the good records next to it are accepted either way."""
    ledger.pipeline(server, "partitions", {"schema": [{"name": "id", "type": "int64", "required": True},
                                                      {"name": "k", "type": "string"}],
                                           "sink": {"partition_by": "k={k}"}},
                    value_sql="k", normalize=lambda row: row[0])
    ids = ledger.ids(3)
    values = ["de", PARTITION_VALUES[label], "fr"]
    status, reply = send(server, "/pipelines/partitions/events",
                         ndjson({"id": i, "k": v} for i, v in zip(ids, values)))
    case = f"partition value {label}"
    outcomes.record(case, "accepted under a bounded name, or rejected; never blocks the epoch",
                    observed(status, reply))
    assert status == 200, reply
    rejected = {r["index"] for r in reply["data"]["rejected"]}
    assert rejected <= {1}, reply["data"]
    assert_per_record(status, reply, ids, {1: {r["code"] for r in reply["data"]["rejected"]}}
                      if rejected else {}, ledger, case)
    for k, i in enumerate(ids):
        if k not in rejected:
            ledger.values[i] = values[k]
    _assert_healthy(server, ledger)


# -- sinks outside the allowed roots ---------------------------------------------------


OUTSIDE_URIS = ["file:///etc", "file:///tmp/x/../../etc", "file:///", "file:///root", "/etc",
                "file:///tmp", "file://{data}/lake/../outside", "file://{data}/lake/a/../../outside",
                "file://{data}/outside", "file://{allowed}/../outside", "file://{data}/lake/.."]


@pytest.mark.parametrize("uri", OUTSIDE_URIS)
def test_local_sinks_outside_the_roots_are_refused(server: LiveServer, outcomes: OutcomeLog,
                                                   allowed_root: str, uri: str) -> None:
    sink = uri.format(data=server.data_dir, allowed=allowed_root)
    response = server.call("create", {"name": "outside", "sink": {"uri": sink}})
    body = response.json()
    if response.status_code == 200:  # never leave a pipeline that could write there
        server.ok("delete", {"name": "outside"})
    outcomes.record(f"sink.uri {uri}", "400 VALIDATION_ERROR on sink.uri",
                    observed(response.status_code, body))
    assert_error(response.status_code, body, 400, "VALIDATION_ERROR", field="sink.uri")
    assert not os.path.exists(os.path.join(server.data_dir, "outside"))


@pytest.mark.parametrize("uri", ["file://{data}/lake/custom", "file://{allowed}/sub", "{allowed}/plain"])
def test_local_sinks_under_the_roots_are_accepted(server: LiveServer, ledger: Ledger,
                                                  outcomes: OutcomeLog, allowed_root: str,
                                                  uri: str) -> None:
    sink = uri.format(data=server.data_dir, allowed=allowed_root)
    name = "inside_" + hashlib.sha1(uri.encode()).hexdigest()[:8]
    tracked = ledger.pipeline(server, name, {"schema": SCHEMA, "sink": {"uri": sink}})
    assert os.path.realpath(tracked.sink) == os.path.realpath(sink_dir(sink))
    ids = ledger.ids(3)
    status, reply = send(server, f"/pipelines/{name}/events", ndjson({"id": i} for i in ids))
    case = f"sink.uri {uri}"
    outcomes.record(case, "200, events delivered there", observed(status, reply))
    assert_per_record(status, reply, ids, {}, ledger, case)


# -- a name reused after delete --------------------------------------------------------


@pytest.mark.parametrize("generations", [2, 3])
def test_a_name_reused_after_delete_never_overwrites_files(
        server: LiveServer, outcomes: OutcomeLog, ledger: Ledger, generations: int) -> None:
    name = f"reused_{generations}"
    kept: dict[str, str] = {}  # path -> sha256 of every file an earlier generation wrote
    acked: list[int] = []
    sinks: set[str] = set()
    for generation in range(generations):
        created = server.ok("create", {"name": name, "schema": SCHEMA})
        sinks.add(sink_dir(created["sink"]["uri"]))
        ids = ledger.ids(5)
        status, reply = send(server, f"/pipelines/{name}/events",
                             ndjson({"id": i, "s": f"gen{generation}"} for i in ids))
        assert status == 200 and reply["data"]["accepted"] == 5, reply
        acked += ids
        server.ok("stop", {"name": name}, options={"timeout": 60_000})
        for path, digest in kept.items():
            assert os.path.exists(path), f"generation {generation} removed {path}"
            with open(path, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, f"{path} was overwritten"
        for sink in sinks:
            for path in lake_files(sink):
                with open(path, "rb") as f:
                    kept.setdefault(path, hashlib.sha256(f.read()).hexdigest())
        server.ok("delete", {"name": name})
    rows, unreadable = read_lake(sorted(kept), "id")
    delivered = Counter(row[0] for row in rows)
    case = f"delete + create the same name, {generations} generations"
    row = outcomes.record(case, "every generation's files kept, each event once",
                          f"{len(kept)} files, {len(unreadable)} unreadable")
    row.count(acked, delivered)
    assert unreadable == {}
    assert row.lost == 0 and row.duplicated == 0, (row.lost, row.duplicated)


# -- after stop: every accepted event once, nothing refused, every file readable --------


def test_after_stop_every_accepted_event_is_in_the_lake_once(server: LiveServer, ledger: Ledger,
                                                              outcomes: OutcomeLog) -> None:
    assert ledger.pipelines, "run with the rest of the module"
    lake = ledger.stop_and_read(server)
    for case, ids in ledger.acked.items():
        row = outcomes.rows.get(case) or outcomes.record(case, "delivered once")
        row.count(ids, lake.delivered)
    everything = lake_files(os.path.join(server.data_dir, "lake")) + [
        p for t in ledger.pipelines.values() for p in lake_files(t.sink)]
    _rows, unreadable = read_lake(sorted(set(everything)), "count(*)")
    acked = set().union(*ledger.acked.values())
    problems = {
        "pipelines not stopped": lake.not_stopped,
        "unreadable files": {**lake.unreadable, **unreadable},
        "acknowledged, not delivered": sorted(acked - set(lake.delivered))[:20],
        "delivered more than once": sorted(i for i, n in lake.delivered.items() if n > 1)[:20],
        "refused, yet delivered": sorted(ledger.refused & set(lake.delivered))[:20],
        "values not read back": lake.values_missing,
        "values changed (read, sent)": {i: (lake.values.get(i), want)
                                        for i, want in ledger.values.items()
                                        if i in lake.values and lake.values[i] != want},
    }
    found = {k: v for k, v in problems.items() if v}
    outcomes.record("every pipeline stopped, its lake read back by DuckDB",
                    "each acknowledged event once, no refused event, every file readable",
                    f"{len(ledger.pipelines)} pipelines, {len(set(everything))} files"
                    + (": " + ", ".join(found) if found else ": all readable")
                    ).count(acked, lake.delivered)
    assert found == {}
    _assert_healthy(server, ledger)
