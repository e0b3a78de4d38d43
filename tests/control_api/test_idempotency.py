"""X-Idempotency-Key through the real server: replay, conflict, concurrent duplicates."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.control_api.conftest import Api, make_key


def _events_in(api: Api, name: str) -> int:
    return int(api.ok("get", {"name": name})["events_in"])


def test_same_key_and_body_replays_without_ingesting_again(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("idem")
    api.ok("create", {"name": name})
    events = [{"a": 1}, {"a": 2}, {"a": 3}]
    first = api.call("ingest", {"name": name, "events": events},
                     headers={"X-Idempotency-Key": "k-1", "X-Request-ID": "first"})
    again = api.call("ingest", {"name": name, "events": events},
                     headers={"X-Idempotency-Key": "k-1", "X-Request-ID": "second"})
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json()["data"] == first.json()["data"] == {"accepted": 3, "rejected": []}
    assert again.json()["meta"]["requestId"] == "second" == again.headers["X-Request-ID"]
    assert _events_in(api, name) == 3

    # The fast path honours the key as well.
    fast = [api.ndjson(name, events, headers={"X-Idempotency-Key": "k-fast"}) for _ in range(2)]
    assert [r.json()["data"]["accepted"] for r in fast] == [3, 3]
    assert _events_in(api, name) == 6

    other = api.call("ingest", {"name": name, "events": events[:1]},
                     headers={"X-Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert other.json()["error"] == {
        "code": "CONFLICT", "details": {"field": "X-Idempotency-Key"},
        "message": other.json()["error"]["message"]}
    assert _events_in(api, name) == 6


def test_a_stored_error_is_replayed_too_and_keys_are_per_api_key(
        api: Api, unique: Callable[[str], str]) -> None:
    name = unique("idem_err")
    api.ok("create", {"name": name})
    body = {"name": name}
    first = api.call("create", body, headers={"X-Idempotency-Key": "create-twice"})
    assert first.status_code == 409  # the name exists: a client error is an answer, kept
    replay = api.call("create", body, headers={"X-Idempotency-Key": "create-twice"})
    assert replay.status_code == 409 and replay.headers["Idempotent-Replayed"] == "true"

    other_key = Api(api.server, make_key(api.server, "admin"))
    ingest = {"name": name, "events": [{"a": 1}]}
    for caller in (api, other_key):
        response = caller.call("ingest", ingest, headers={"X-Idempotency-Key": "shared"})
        assert response.status_code == 200 and "Idempotent-Replayed" not in response.headers
    assert _events_in(api, name) == 2


def test_concurrent_duplicates_ingest_once(api: Api, unique: Callable[[str], str]) -> None:
    name = unique("idem_race")
    api.ok("create", {"name": name})
    body = json.dumps({"operation": "ingest", "parameters": {
        "name": name, "events": [{"i": i} for i in range(50)]}})

    def send(_: int) -> requests.Response:
        return requests.post(api.url + "/pipeline", data=body, timeout=60, headers=api.headers(
            **{"Content-Type": "application/json", "X-Idempotency-Key": "race"}))

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert all(r.json()["data"]["accepted"] == 50 for r in responses)
    assert sum(1 for r in responses if "Idempotent-Replayed" not in r.headers) == 1
    assert _events_in(api, name) == 50


def test_bad_keys_are_400(api: Api) -> None:
    response = api.call("list", headers={"X-Idempotency-Key": "x" * 256})
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "X-Idempotency-Key"
