"""GET /openapi.json describes the contract; schemathesis fuzzes the live server with it.

The fuzzer gets a server of its own (it creates, stops and deletes at will)
and sends only what the document allows and what it forbids; no reply may
be a 5xx, and every reply must match the document (status, headers, body).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from control_api.openapi import build_spec
from control_api.operations import OPERATIONS
from control_api.webhooks.events import EVENT_TYPES
from tests.conftest import ADMIN_KEY
from tests.live import LiveServer


@pytest.fixture(scope="module")
def fuzz_server(start_server: Callable[..., LiveServer], tmp_path_factory: Any) -> LiveServer:
    # The fuzzer's sinks are redirected to this temp dir (below): let them write there.
    lake = str(tmp_path_factory.getbasetemp() / "fuzz-lake")
    return start_server({"PIPELINE_DO_LOCAL_SINK_ROOTS": lake})


def test_the_served_document_is_valid_openapi_31_and_names_everything(
        fuzz_server: LiveServer) -> None:
    response = requests.get(fuzz_server.url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    spec = response.json()
    validate(spec)
    assert spec == build_spec()
    assert spec["openapi"].startswith("3.1")
    variants = spec["paths"]["/pipeline"]["post"]["requestBody"]["content"]["application/json"]
    named = {v["properties"]["operation"]["const"] for v in variants["schema"]["oneOf"]}
    assert named == set(OPERATIONS)
    assert spec["components"]["schemas"]["EventType"]["enum"] == list(EVENT_TYPES)
    for path in ("/pipelines/{ref}/events", "/webhooks", "/webhooks/{webhook_id}",
                 "/webhooks/{webhook_id}/deliveries", "/metrics", "/healthz"):
        assert path in spec["paths"]


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_ctx: Any, value: Any) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(
        value).encode()


# The document the server serves (asserted equal above), loaded without a server
# so pytest can collect one test per operation.
schema = schemathesis.openapi.from_dict(build_spec())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_live_server_honours_its_document(case: Any, fuzz_server: LiveServer,
                                              tmp_path_factory: Any) -> None:
    body = case.body
    if isinstance(body, dict) and body.get("operation") == "create" \
            and isinstance(body.get("parameters"), dict):
        # Whatever sink the fuzzer picks, its files stay in a temp dir.
        sink = body["parameters"].get("sink")
        if isinstance(sink, dict):
            sink["uri"] = str(tmp_path_factory.getbasetemp() / "fuzz-lake")
    key = (case.headers or {}).get("X-Idempotency-Key")
    if isinstance(key, str) and 1 <= len(key) <= 255:
        # A fresh key per case: one fixed key would make every later case a 409.
        case.headers["X-Idempotency-Key"] = uuid.uuid4().hex
    # Positive-data acceptance cannot hold: a JSON Schema cannot say which SQL
    # text is valid, so some documented-valid requests are rightly a 400.
    case.call_and_validate(base_url=fuzz_server.url,
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                           excluded_checks=[positive_data_acceptance])
