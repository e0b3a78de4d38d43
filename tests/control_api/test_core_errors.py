"""The envelope and the error replies of the core operations (API.md)."""

from __future__ import annotations

from typing import Any

from control_api import context

CREATE = {"operation": "create", "parameters": {
    "name": "clicks", "schema": [{"name": "user_id", "type": "int64", "required": True}],
    "sql": "SELECT user_id FROM events"}}


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["meta"]["requestId"] == response.headers["X-Request-ID"]
    for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert header in response.headers
    return dict(body["error"])


def test_success_envelope_echoes_the_request_id(client: Any, auth: dict[str, str]) -> None:
    response = client.post("/pipeline", json=CREATE, headers={**auth, "X-Request-ID": "abc-123"})
    body = response.get_json()
    assert response.status_code == 200 and body["success"] is True
    assert body["meta"]["requestId"] == "abc-123" == response.headers["X-Request-ID"]
    assert isinstance(body["meta"]["duration"], int)
    assert body["meta"]["timestamp"].endswith("Z")
    data = body["data"]
    assert data["id"].startswith("pl_") and data["status"] == "created" and data["version"] == 1
    assert set(data) >= {"id", "name", "status", "version", "sql", "schema", "event_time_field",
                         "sink", "runner", "created_at", "updated_at"}
    generated = client.post("/pipeline", json={"operation": "list"}, headers=auth)
    assert generated.get_json()["meta"]["requestId"].startswith("req_")


def test_missing_or_unknown_key_is_401(client: Any, auth: dict[str, str]) -> None:
    _error(client.post("/pipeline", json=CREATE), 401, "AUTHENTICATION_ERROR")
    _error(client.post("/pipeline", json=CREATE, headers={"Authorization": "Bearer nope"}),
           401, "AUTHENTICATION_ERROR")
    _error(client.post("/pipelines/x/events", data=b"{}",
                       headers={"Content-Type": "application/x-ndjson"}),
           401, "AUTHENTICATION_ERROR")


def test_bad_requests_are_400_naming_the_field(client: Any, auth: dict[str, str]) -> None:
    err = _error(client.post("/pipeline", data=b"{not json", headers=auth), 400,
                 "VALIDATION_ERROR")
    assert err["details"]["field"] == "body"
    err = _error(client.post("/pipeline", json={"operation": "explode"}, headers=auth), 400,
                 "VALIDATION_ERROR")
    assert err["details"]["field"] == "operation" and "create" in err["message"]
    bad_sql = {"operation": "create", "parameters": {"name": "x", "sql": "SELECT nope FROM events"}}
    err = _error(client.post("/pipeline", json=bad_sql, headers=auth), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "sql" and "nope" in err["message"]
    bad_type = {"operation": "create", "parameters": {
        "name": "x", "schema": [{"name": "a", "type": "uuid"}]}}
    err = _error(client.post("/pipeline", json=bad_type, headers=auth), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "schema[0].type"
    err = _error(client.post("/pipeline", json={"operation": "get", "parameters": {}},
                             headers=auth), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "parameters.pipeline_id"
    client.post("/pipeline", json=CREATE, headers=auth)
    err = _error(client.post("/pipeline", json={"operation": "ingest", "parameters": {
        "name": "clicks", "events": {"not": "a list"}}}, headers=auth), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "parameters.events"
    err = _error(client.post("/pipelines/clicks/events", data=b"a,b",
                             headers={**auth, "Content-Type": "text/csv"}), 400,
                 "VALIDATION_ERROR")
    assert err["details"]["field"] == "Content-Type"


def test_unknown_pipeline_is_404_and_duplicate_name_409(client: Any,
                                                        auth: dict[str, str]) -> None:
    _error(client.post("/pipeline", json={"operation": "get", "parameters": {"name": "ghost"}},
                       headers=auth), 404, "NOT_FOUND")
    _error(client.post("/pipelines/ghost/events", data=b'{"a": 1}',
                       headers={**auth, "Content-Type": "application/x-ndjson"}), 404, "NOT_FOUND")
    assert client.post("/pipeline", json=CREATE, headers=auth).status_code == 200
    err = _error(client.post("/pipeline", json=CREATE, headers=auth), 409, "CONFLICT")
    assert "clicks" in err["message"]
    start = {"operation": "start", "parameters": {"name": "clicks"}}
    assert client.post("/pipeline", json=start, headers=auth).status_code == 200
    _error(client.post("/pipeline", json=start, headers=auth), 409, "CONFLICT")


def test_oversized_body_is_413(app: Any, auth: dict[str, str]) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = app.test_client().post("/pipelines/x/events", data=b"x" * 2000,
                                      headers={**auth, "Content-Type": "application/x-ndjson"})
    _error(response, 413, "PAYLOAD_TOO_LARGE")


def test_ingest_reports_rejections_and_keeps_the_good(client: Any, auth: dict[str, str]) -> None:
    client.post("/pipeline", json=CREATE, headers=auth)
    response = client.post("/pipelines/clicks/events", headers={
        **auth, "Content-Type": "application/x-ndjson"},
        data=b'{"user_id": 1}\n{"user_id": "x"}\n{}\n{"user_id": 2}\n')
    data = response.get_json()["data"]
    assert data["accepted"] == 2
    assert [(r["index"], r["code"]) for r in data["rejected"]] == [(1, "type_mismatch"),
                                                                  (2, "missing_field")]
    got = client.post("/pipeline", json={"operation": "get", "parameters": {"name": "clicks"}},
                      headers=auth).get_json()["data"]
    assert (got["events_in"], got["events_rejected"], got["backlog_events"]) == (2, 2, 2)


def test_internal_errors_leak_nothing(app: Any, auth: dict[str, str]) -> None:
    def explode(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("secret internal detail /etc/shadow")

    setattr(context.of(app).service, "list_all", explode)  # noqa: B010 - a typed method, replaced
    response = app.test_client().post("/pipeline", json={"operation": "list"}, headers=auth)
    err = _error(response, 500, "INTERNAL_ERROR")
    assert "secret" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert err["message"].startswith("internal error")


def test_ingest_after_delete_is_404_and_a_new_pipeline_of_that_name_gets_the_events(
        client: Any, auth: dict[str, str]) -> None:
    ndjson = {**auth, "Content-Type": "application/x-ndjson"}
    assert client.post("/pipeline", json=CREATE, headers=auth).status_code == 200
    assert client.post("/pipelines/clicks/events", data=b'{"user_id": 1}',
                       headers=ndjson).status_code == 200
    deleted = client.post("/pipeline", json={"operation": "delete",
                                             "parameters": {"name": "clicks"}}, headers=auth)
    assert deleted.get_json()["data"] == {"deleted": True}
    _error(client.post("/pipelines/clicks/events", data=b'{"user_id": 2}', headers=ndjson),
           404, "NOT_FOUND")
    assert client.post("/pipeline", json=CREATE, headers=auth).status_code == 200
    assert client.post("/pipelines/clicks/events", data=b'{"user_id": 3}',
                       headers=ndjson).get_json()["data"]["accepted"] == 1
    got = client.post("/pipeline", json={"operation": "get", "parameters": {"name": "clicks"}},
                      headers=auth).get_json()["data"]
    assert got["events_in"] == 1


def test_a_distributed_runner_without_its_settings_is_refused_at_start_naming_them(
        client: Any, auth: dict[str, str]) -> None:
    """Never run locally behind the user's back: a Dataflow pipeline on a server with
    no Dataflow settings is refused, naming the first missing one and where to set it."""
    create = {"operation": "create", "parameters": {"name": "remote",
                                                    "runner": {"type": "dataflow"}}}
    assert client.post("/pipeline", json=create, headers=auth).status_code == 200
    err = _error(client.post("/pipeline", json={"operation": "start",
                                                "parameters": {"name": "remote"}},
                             headers=auth), 400, "VALIDATION_ERROR")
    assert err["details"]["field"].startswith("runner.options.")
    assert "PIPELINE_DO_DATAFLOW_" in err["message"]
    got = client.post("/pipeline", json={"operation": "get", "parameters": {"name": "remote"}},
                      headers=auth).get_json()["data"]
    assert got["status"] == "created"


def test_sql_whose_output_parquet_cannot_store_is_refused_at_create(
        client: Any, auth: dict[str, str]) -> None:
    create = {"operation": "create", "parameters": {
        "name": "intervals", "sql": "SELECT INTERVAL 1 DAY AS pause FROM events"}}
    err = _error(client.post("/pipeline", json=create, headers=auth), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "sql" and "'pause'" in err["message"]
