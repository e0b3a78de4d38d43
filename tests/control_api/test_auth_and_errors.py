"""Scopes, keys and every status/code of API.md's table, through the real server."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from beam_pipelines.errors import StorageError, Unavailable
from control_api import context
from tests.control_api.conftest import Api, make_key, wait_for

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code
    assert body["meta"]["requestId"] == response.headers["X-Request-ID"]
    assert all(h in response.headers for h in RATE_HEADERS)
    assert "Traceback" not in response.text and 'File "' not in response.text
    return dict(body["error"])


def test_each_scope_reaches_only_its_operations(api: Api, unique: Callable[[str], str]) -> None:
    name = unique("scoped")
    api.ok("create", {"name": name})
    ref = {"name": name}
    read = Api(api.server, make_key(api.server, "read"))
    ingest = Api(api.server, make_key(api.server, "ingest"))

    for operation in ("get", "list", "pipeline", "monitor", "logs"):
        assert read.call(operation, ref).status_code == 200, operation
        _error(ingest.call(operation, ref), 403, "AUTHORIZATION_ERROR")
    for operation, params in (("create", {"name": unique("nope")}), ("start", ref),
                              ("pause", ref), ("resume", ref), ("stop", ref), ("delete", ref),
                              ("transform", {**ref, "sql": "SELECT 1 AS x FROM events"}),
                              ("ingest", {**ref, "events": [{"a": 1}]})):
        err = _error(read.call(operation, params), 403, "AUTHORIZATION_ERROR")
        assert err["details"] == {"scope": "read", "required": "ingest" if operation == "ingest"
                                  else "admin"}
        if operation != "ingest":
            _error(ingest.call(operation, params), 403, "AUTHORIZATION_ERROR")
    assert ingest.call("ingest", {**ref, "events": [{"a": 1}]}).json()["data"]["accepted"] == 1
    assert ingest.ndjson(name, [{"a": 2}]).json()["data"]["accepted"] == 1
    _error(read.ndjson(name, [{"a": 3}]), 403, "AUTHORIZATION_ERROR")
    assert read.get("/metrics").status_code == 200
    _error(ingest.get("/metrics"), 403, "AUTHORIZATION_ERROR")
    _error(read.get("/webhooks"), 403, "AUTHORIZATION_ERROR")
    assert api.ok("get", ref)["events_in"] == 2  # admin: everything

    # Keys are stored only as hashes ...
    with sqlite3.connect(f"{api.server.data_dir}/pipeline-do.sqlite") as con:
        stored = " ".join(str(v) for row in con.execute("SELECT * FROM api_keys") for v in row)
    assert read.key not in stored and ingest.key not in stored
    # ... and a revoked key stops working (each worker's key cache holds it for 2 s at most).
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "control_api.cli", "keys", "revoke",
                          read.key[:12], "--data-dir", api.server.data_dir],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "revoked 1 key" in out
    def all_refused() -> list[requests.Response] | None:
        responses = [read.call("list") for _ in range(4)]
        return responses if all(r.status_code == 401 for r in responses) else None

    refused = wait_for(all_refused, timeout=20, message="revocation in every worker")
    _error(refused[0], 401, "AUTHENTICATION_ERROR")


def test_every_client_error_code_over_http(api: Api, unique: Callable[[str], str]) -> None:
    url = api.url + "/pipeline"
    err = _error(requests.post(url, data=b"{nope", headers=api.headers(
        **{"Content-Type": "application/json"}), timeout=30), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "body"
    err = _error(api.call("explode"), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "operation"
    err = _error(api.call("list", options={"timeout": 0}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "options.timeout"
    _error(requests.post(url, json={"operation": "list"}, timeout=30), 401,
           "AUTHENTICATION_ERROR")
    _error(api.call("get", {"name": unique("ghost")}), 404, "NOT_FOUND")
    _error(api.get("/no/such/route"), 404, "NOT_FOUND")

    name = unique("codes")
    api.ok("create", {"name": name, "sink": {"roll": {"interval_seconds": 0.5}}})
    _error(api.call("create", {"name": name}), 409, "CONFLICT")
    err = _error(api.call("resume", {"name": name}), 409, "CONFLICT")
    assert err["details"]["status"] == "created"

    big = b'{"a": "' + b"x" * (5 * 1024 * 1024) + b'"}\n'
    try:
        response = requests.post(f"{api.url}/pipelines/{name}/events", data=big, timeout=60,
                                 headers=api.headers(**{"Content-Type": "application/x-ndjson"}))
    except requests.ConnectionError:
        pytest.fail("the server closed the connection instead of answering 413")
    err = _error(response, 413, "PAYLOAD_TOO_LARGE")
    assert err["details"]["limit_bytes"] == 5 * 1024 * 1024

    # 504: stop waits for its flush only as long as options.timeout allows.
    api.ok("start", {"name": name})
    assert api.ndjson(name, [{"a": 1}]).status_code == 200
    err = _error(api.call("stop", {"name": name}, options={"timeout": 1}), 504, "TIMEOUT")
    assert err["details"]["status"] == "stopping"
    wait_for(lambda: api.ok("get", {"name": name})["status"] == "stopped",
             message="the flush to finish by itself")
    assert api.ok("start", {"name": name})["status"] == "running"  # start after stop


def test_rate_limit_is_shared_by_two_gunicorn_workers(start_server: Any) -> None:
    server = start_server({"PIPELINE_DO_RATE_LIMIT": "20"}, ("--workers", "2"))
    api = Api(server)

    def send(_: int) -> requests.Response:
        with requests.Session() as session:  # a new connection each: both workers take some
            return session.post(api.url + "/pipeline", json={"operation": "list"},
                                headers=api.headers(), timeout=60)

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(send, range(30)))
    allowed = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(allowed) == 20 and len(limited) == 10
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in allowed) == list(range(20))
    for r in limited:
        _error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Limit"] == "20" and r.headers["X-RateLimit-Remaining"] == "0"
    # Another key has its own budget.
    other = Api(server, make_key(server, "read"))
    assert other.call("list").status_code == 200


def test_server_errors_never_leak_internals(client: Any, auth: dict[str, str], app: Any,
                                            monkeypatch: Any) -> None:
    service = context.of(app).service

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("secret internal detail")

    monkeypatch.setattr(service, "list_all", broken)
    response = client.post("/pipeline", json={"operation": "list"}, headers=auth)
    assert response.status_code == 500
    body = response.get_json()
    assert body["error"]["code"] == "INTERNAL_ERROR"
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert body["meta"]["requestId"] in body["error"]["message"]

    monkeypatch.setattr(service, "list_all", lambda: (_ for _ in ()).throw(Unavailable("full")))
    response = client.post("/pipeline", json={"operation": "list", "options": {"retries": 0}},
                           headers=auth)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_transient_storage_errors_are_retried_within_the_call(
        client: Any, auth: dict[str, str], app: Any, monkeypatch: Any) -> None:
    service = context.of(app).service
    calls: list[int] = []
    real = service.list_all

    def flaky() -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise StorageError("the disk hiccuped")
        return real()

    monkeypatch.setattr(service, "list_all", flaky)
    response = client.post("/pipeline", json={"operation": "list", "options": {"retries": 3}},
                           headers=auth)
    assert response.status_code == 200 and len(calls) == 3
    calls.clear()
    response = client.post("/pipeline", json={"operation": "list", "options": {"retries": 1}},
                           headers=auth)
    assert response.status_code == 503 and len(calls) == 2
    assert response.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"

    def locked() -> Any:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(service, "list_all", locked)
    response = client.post("/pipeline", json={"operation": "list", "options": {"retries": 1}},
                           headers=auth)
    assert response.status_code == 503  # a busy store is transient, not a bug
