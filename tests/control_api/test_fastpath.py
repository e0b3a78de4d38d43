"""The lean events path (control_api.fastpath) serves ``POST /pipelines/<ref>/events``
and answers exactly as the Flask route does.

Each case is sent twice to the same app: through its WSGI entry (the lean
path) and straight to Flask's own ``wsgi_app`` (the dispatcher's fallback,
where the same route still runs as a Flask view). Status, headers and body
must match, except the per-request timestamp, duration and window reset.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import Client, TestResponse

from control_api import context, create_app
from control_api.auth import create_key
from control_api.fastpath import EventsFastPath
from tests.conftest import ADMIN_KEY

Send = Callable[..., TestResponse]
# The window's end, and the length of a body whose meta.duration may differ in digits.
_VOLATILE_HEADERS = ("X-RateLimit-Reset", "Retry-After", "Content-Length")


def _make_app(tmp_path: Any, **settings: Any) -> Flask:
    config = {"DATA_DIR": str(tmp_path / "data"), "API_KEY": ADMIN_KEY, "RATE_LIMIT": 0,
              "TESTING": True, **settings}
    return create_app(config)


def _create(app: Flask, name: str) -> None:
    reply = app.test_client().post("/pipeline", json={"operation": "create",
                                                      "parameters": {"name": name}},
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert reply.status_code == 200, reply.get_data(as_text=True)


def _senders(app: Flask) -> tuple[Send, Send]:
    """(lean, flask): POST through the app's entry, and through Flask alone."""
    assert isinstance(app.wsgi_app, EventsFastPath)
    lean = FlaskClient(app, TestResponse)
    flask_only = Client(app.wsgi_app.fallback, TestResponse)

    def sender(client: Client) -> Send:
        def send(path: str, body: bytes = b"", **headers: str) -> TestResponse:
            headers = {"X-Request-ID": "req-parity", **headers}
            content_type = headers.pop("Content-Type", "application/x-ndjson")
            return client.post(path, data=body, headers=headers, content_type=content_type)
        return send

    return sender(lean), sender(flask_only)


def _shape(reply: TestResponse) -> tuple[int, dict[str, str], Any]:
    assert reply.headers["Content-Length"] == str(len(reply.get_data()))
    body = json.loads(reply.get_data())
    body["meta"].pop("timestamp")
    body["meta"].pop("duration", None)
    headers = {k: v for k, v in reply.headers.items() if k not in _VOLATILE_HEADERS}
    return reply.status_code, headers, body


def _same(lean: TestResponse, flask: TestResponse) -> tuple[int, dict[str, str], Any]:
    assert _shape(lean) == _shape(flask)
    return _shape(lean)


@pytest.fixture
def app(tmp_path: Any) -> Flask:
    app = _make_app(tmp_path, MAX_BODY_BYTES=4096)
    _create(app, "parity")
    return app


def test_the_lean_path_serves_events_without_flask_hooks_or_the_view(tmp_path: Any) -> None:
    app = _make_app(tmp_path)
    ran: list[str] = []

    def before() -> None:
        ran.append("before_request")

    def teardown(_exc: BaseException | None) -> None:
        ran.append("teardown_request")

    view = app.view_functions["ingest.ingest_events"]

    def counted_view(**kwargs: Any) -> Any:
        ran.append("view")
        return view(**kwargs)

    app.before_request(before)
    app.teardown_request(teardown)
    app.view_functions["ingest.ingest_events"] = counted_view
    _create(app, "lean")
    assert ran == ["before_request", "teardown_request"]  # the create went through Flask
    ran.clear()
    auth = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-ID": "req-lean-1"}
    reply = app.test_client().post("/pipelines/lean/events", data=b'{"a":1}\n{"a":2}\n',
                                   headers=auth, content_type="application/x-ndjson")
    assert reply.status_code == 200
    assert reply.get_json()["data"] == {"accepted": 2, "rejected": []}
    assert reply.headers["X-Request-ID"] == "req-lean-1"
    assert reply.get_json()["meta"]["requestId"] == "req-lean-1"
    assert ran == []
    # Another method on the path is still Flask's: a 405 naming what is allowed.
    reply = app.test_client().get("/pipelines/lean/events", headers=auth)
    assert reply.status_code == 405 and "POST" in reply.headers["Allow"]
    assert ran == ["before_request", "teardown_request"]
    assert context.of(app).service.monitor("lean", 60.0)["events_in"] == 2


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    (b'{"a":1}\n', {"Authorization": ""}, 401, "AUTHENTICATION_ERROR"),
    (b'{"a":1}\n', {"Authorization": "Bearer pdo_nope"}, 401, "AUTHENTICATION_ERROR"),
    (b'{"a":1}\n{"a":2}\n', {}, 200, None),
    (b'[{"a":1},{"b":"x"}]', {"Content-Type": "application/json"}, 200, None),
    (gzip.compress(b'{"a":1}\n'), {"Content-Encoding": "gzip"}, 200, None),
    (b'{"a":1}\n', {"Content-Encoding": "br"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    (b"x" * 5000, {}, 413, "PAYLOAD_TOO_LARGE"),
    (gzip.compress(b" " * 20000), {"Content-Encoding": "gzip"}, 413, "PAYLOAD_TOO_LARGE"),
    (b'{"a":1}', {"Content-Type": "text/plain"}, 400, "VALIDATION_ERROR"),
    (b"", {"Content-Type": "application/json"}, 400, "VALIDATION_ERROR"),
    (b"[{", {"Content-Type": "application/json"}, 400, "VALIDATION_ERROR"),
    (b'"x"', {"Content-Type": "application/json"}, 400, "VALIDATION_ERROR"),
])
def test_every_answer_matches_the_flask_route(app: Flask, body: bytes, headers: dict[str, str],
                                              status: int, code: str | None) -> None:
    lean, flask = _senders(app)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", **headers}
    got_status, got_headers, got = _same(lean("/pipelines/parity/events", body, **headers),
                                         flask("/pipelines/parity/events", body, **headers))
    assert got_status == status
    assert got["meta"]["requestId"] == "req-parity"
    assert got_headers["X-Request-ID"] == "req-parity"
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining"} <= set(got_headers)
    if code is None:
        assert got["success"] is True and got["data"]["accepted"] >= 1
    else:
        assert got["success"] is False and got["error"]["code"] == code


def test_scopes_and_unknown_pipelines_match(app: Flask) -> None:
    lean, flask = _senders(app)
    read_key = create_key(context.of(app).store, "read")
    ingest_key = create_key(context.of(app).store, "ingest")
    status, _, body = _same(lean("/pipelines/parity/events", b'{"a":1}\n',
                                 Authorization=f"Bearer {read_key}"),
                            flask("/pipelines/parity/events", b'{"a":1}\n',
                                  Authorization=f"Bearer {read_key}"))
    assert (status, body["error"]["code"]) == (403, "AUTHORIZATION_ERROR")
    status, _, body = _same(lean("/pipelines/nope/events", b'{"a":1}\n',
                                 Authorization=f"Bearer {ingest_key}"),
                            flask("/pipelines/nope/events", b'{"a":1}\n',
                                  Authorization=f"Bearer {ingest_key}"))
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    status, _, body = _same(lean("/pipelines/parity/events", b'{"a":1}\n',
                                 Authorization=f"Bearer {ingest_key}"),
                            flask("/pipelines/parity/events", b'{"a":1}\n',
                                  Authorization=f"Bearer {ingest_key}"))
    assert (status, body["data"]["accepted"]) == (200, 1)


def test_idempotency_keys_replay_and_conflict_the_same(app: Flask) -> None:
    lean, flask = _senders(app)
    auth = f"Bearer {ADMIN_KEY}"
    replies: dict[str, list[TestResponse]] = {}
    for name, send in (("lean", lean), ("flask", flask)):
        key = f"idem-{name}"
        replies[name] = [
            send("/pipelines/parity/events", b'{"a":1}\n', Authorization=auth,
                 **{"X-Idempotency-Key": key}),
            send("/pipelines/parity/events", b'{"a":1}\n', Authorization=auth,
                 **{"X-Idempotency-Key": key}),
            send("/pipelines/parity/events", b'{"a":2}\n', Authorization=auth,
                 **{"X-Idempotency-Key": key}),
        ]
    first, replay, conflict = (_same(a, b) for a, b in zip(replies["lean"], replies["flask"]))
    assert first[0] == 200 and "Idempotent-Replayed" not in first[1]
    assert replay[0] == 200 and replay[1]["Idempotent-Replayed"] == "true"
    assert replay[2]["data"] == first[2]["data"] == {"accepted": 1, "rejected": []}
    assert (conflict[0], conflict[2]["error"]["code"]) == (409, "CONFLICT")
    # Each path ingested its event once: the replays did not ingest again.
    assert context.of(app).service.monitor("parity", 60.0)["events_in"] == 2


def test_the_rate_limit_and_its_headers_match(tmp_path: Any) -> None:
    app = _make_app(tmp_path, RATE_LIMIT=1)
    _create(app, "limited")
    lean, flask = _senders(app)
    store = context.of(app).store
    refused: list[TestResponse] = []
    for send in (lean, flask):
        auth = f"Bearer {create_key(store, 'ingest')}"
        # Limit 1 a minute: the second request is refused (a third, if the minute
        # turned between the first two).
        for _ in range(3):
            reply = send("/pipelines/limited/events", b'{"a":1}\n', Authorization=auth)
            if reply.status_code == 429:
                refused.append(reply)
                break
    assert len(refused) == 2
    _, headers, body = _same(*refused)
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("1", "0")
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)


def test_mounting_refuses_an_app_with_a_hook_the_lean_path_would_skip(tmp_path: Any) -> None:
    app = _make_app(tmp_path)
    assert isinstance(app.wsgi_app, EventsFastPath)
    EventsFastPath(app, app.wsgi_app.fallback)  # the factory's own app: accepted

    def stamp(response: Any) -> Any:
        return response

    app.after_request(stamp)
    with pytest.raises(RuntimeError, match="after_request hooks"):
        EventsFastPath(app, app.wsgi_app.fallback)
