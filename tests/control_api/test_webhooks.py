"""Webhooks through the real server to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from control_api.webhooks.events import EVENT_TYPES
from tests.control_api.conftest import Api, Receiver, valid_signature, wait_for

SECRET = "s3cret-for-tests"
SCHEMA = [{"name": "n", "type": "int64", "required": True},
          {"name": "s", "type": "string"},
          {"name": "ts", "type": "timestamp", "required": True}]


def test_every_event_type_arrives_signed_and_a_500_is_retried(
        api: Api, receiver: Receiver, unique: Callable[[str], str]) -> None:
    receiver.fail_next["pipeline.written"] = 1  # the first written delivery gets a 500
    hook = _create_hook(api, receiver.url, list(EVENT_TYPES), SECRET)
    assert hook["events"] == list(EVENT_TYPES) and "secret" not in hook

    name = unique("hooked")
    pipeline = api.ok("create", {"name": name, "schema": SCHEMA, "event_time_field": "ts",
                                 "sink": {"roll": {"interval_seconds": 0.5}}})
    pid = pipeline["id"]
    api.ok("start", {"name": name})
    events = [{"n": i, "s": "x", "ts": f"2026-03-01T00:00:0{i}Z"} for i in range(3)]
    assert api.ndjson(name, [*events, {"s": "no n"}]).json()["data"]["accepted"] == 3
    wait_for(lambda: api.ok("monitor", {"name": name})["files_written"] >= 1, message="a file")
    api.ok("pause", {"name": name})
    api.ok("resume", {"name": name})
    assert api.ok("transform", {"name": name, "sql": "SELECT n, ts FROM events"})["version"] == 2
    api.ok("stop", {"name": name})

    broken = unique("broken")
    broken_id = api.ok("create", {"name": broken, "schema": [{"name": "s", "type": "string"}],
                                  "sql": "SELECT CAST(s AS INTEGER) AS n FROM events",
                                  "sink": {"roll": {"interval_seconds": 0.5}}})["id"]
    api.ok("ingest", {"name": broken, "events": [{"s": "not a number"}]})
    api.ok("start", {"name": broken})
    wait_for(lambda: receiver.events(broken_id) and any(
        e["type"] == "pipeline.failed" for e in receiver.events(broken_id)),
        message="pipeline.failed")
    api.ok("delete", {"name": broken})

    wanted = {"pipeline.created", "pipeline.started", "pipeline.ingested", "pipeline.written",
              "pipeline.paused", "pipeline.resumed", "pipeline.transformed", "pipeline.stopped"}
    wait_for(lambda: wanted <= {e["type"] for e in receiver.events(pid)}, message=str(wanted))
    wait_for(lambda: "pipeline.deleted" in {e["type"] for e in receiver.events(broken_id)},
             message="pipeline.deleted")
    assert set(EVENT_TYPES) == {e["type"] for e in receiver.events(pid) + receiver.events(broken_id)}

    # Every request, failed attempts included, is signed over its raw body.
    for item in receiver.received:
        assert valid_signature(SECRET, item["body"], item["headers"]["X-Webhook-Signature"])
        assert item["headers"]["X-Webhook-Id"] == item["event"]["id"]
        assert set(item["event"]) == {"id", "type", "created_at", "data"}

    # The written delivery answered 500 first, then came again with the same id.
    written = [r for r in receiver.received if r["event"]["type"] == "pipeline.written"
               and r["event"]["data"]["id"] == pid]
    first = next(r for r in written if r["failed"])
    retried = [r for r in written if r["event"]["id"] == first["event"]["id"] and not r["failed"]]
    assert retried and retried[0]["body"] == first["body"]
    data = retried[0]["event"]["data"]
    assert data["rows"] >= 1 and data["bytes"] > 0 and data["path"].endswith(".parquet")
    assert data["min_event_time"].startswith("2026-03-01T00:00:0")
    assert data["min_event_time"] <= data["max_event_time"]

    ingested = [e["data"] for e in receiver.events(pid) if e["type"] == "pipeline.ingested"]
    assert sum(d["accepted"] for d in ingested) == 3
    assert sum(d["rejected"] for d in ingested) == 1

    deliveries = api.get(f"/webhooks/{hook['id']}/deliveries", params={"limit": 500}).json()
    log = next(d for d in deliveries["data"]["deliveries"]
               if d["event_id"] == first["event"]["id"])
    assert log["status"] == "delivered" and log["attempts"] == 2
    assert [a["status_code"] for a in log["log"]] == [500, 204]

    assert api.get("/webhooks").json()["data"]["webhooks"][-1]["id"] == hook["id"]
    assert _delete_hook(api, hook["id"]).status_code == 200
    assert _delete_hook(api, hook["id"]).json()["error"]["code"] == "NOT_FOUND"


def test_ingested_is_coalesced_per_pipeline(api: Api, receiver: Receiver,
                                            unique: Callable[[str], str]) -> None:
    hook = _create_hook(api, receiver.url, ["pipeline.ingested"])
    assert hook["secret"].startswith("whsec_")  # generated, shown once
    name = unique("coalesced")
    pid = api.ok("create", {"name": name})["id"]
    for i in range(20):
        assert api.ndjson(name, [{"i": i}, {"i": i + 100}]).status_code == 200
    wait_for(lambda: sum(e["data"]["accepted"] for e in receiver.events(pid)) == 40,
             message="40 events announced")
    announced = receiver.events(pid)
    assert len(announced) < 20  # 20 requests, coalesced into fewer announcements
    assert announced[-1]["data"]["events_in"] == 40
    for item in receiver.received:
        assert valid_signature(hook["secret"], item["body"], item["headers"]["X-Webhook-Signature"])
    _delete_hook(api, hook["id"])


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.0.0.1/x",
                                 "http://169.254.169.254/latest", "http://[::1]/x",
                                 "http://localhost/x", "ftp://example.com/x"])
def test_private_or_odd_urls_are_refused(client: Any, auth: dict[str, str], url: str) -> None:
    response = client.post("/webhooks", json={"url": url, "events": ["pipeline.created"]},
                           headers=auth)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["details"]["field"] == "url"


def test_webhook_requests_are_validated(client: Any, auth: dict[str, str]) -> None:
    response = client.post("/webhooks", json={"url": "http://example.com/x",
                                              "events": ["pipeline.exploded"]}, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "events[0]"
    response = client.post("/webhooks", json={"url": "http://example.com/x", "events": []},
                           headers=auth)
    assert response.get_json()["error"]["details"]["field"] == "events"
    assert client.delete("/webhooks/wh_nope", headers=auth).status_code == 404
    assert client.get("/webhooks/wh_nope/deliveries", headers=auth).status_code == 404
    assert client.get("/webhooks").status_code == 401


def _create_hook(api: Api, url: str, events: list[str], secret: str | None = None) -> Any:
    import requests

    body: dict[str, Any] = {"url": url, "events": events}
    if secret:
        body["secret"] = secret
    response = requests.post(api.url + "/webhooks", json=body, headers=api.headers(), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _delete_hook(api: Api, webhook_id: str) -> Any:
    import requests

    return requests.delete(f"{api.url}/webhooks/{webhook_id}", headers=api.headers(), timeout=30)
