"""``GET /openapi.json``: the REST contract (API.md) as an OpenAPI 3.1 document.

Built from the same tables the server dispatches on (operations, scopes,
event types, definition enums), so the document cannot name an operation
or value the server does not know. ``python -m control_api.openapi``
prints it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flask import Blueprint, Flask, Response, current_app

from beam_pipelines.model.definition import PIPELINE_NAME_PATTERN, UNKNOWN_FIELD_POLICIES
from control_api.bodies import ALLOWED_ENCODINGS
from control_api.openapi_schemas import (
    ERROR_CODES,
    EVENT,
    NAME,
    PIPELINE_ID,
    component_schemas,
    date_time,
    obj,
    ref,
)
from control_api.operations import OPERATIONS
from transforms.decode import REJECTION_CODES

__all__ = ["bp", "build_spec", "init_app"]

bp = Blueprint("openapi", __name__)

_ERROR_WHEN = {
    400: "Malformed JSON, unknown operation, bad parameters or invalid SQL; details.field names "
         "the field.",
    401: "Missing or unknown API key.",
    403: "The key lacks the scope for the operation.",
    404: "Unknown pipeline or webhook.",
    409: "Illegal state change, duplicate name, or an idempotency key reused with another body.",
    413: "Body over the limit (PIPELINE_DO_MAX_BODY_BYTES, default 5 MiB), with or without "
         "Content-Length; a compressed body counts its decoded size. details.limit_bytes.",
    415: "Content-Encoding not one of " + ", ".join(ALLOWED_ENCODINGS) + "; details.allowed "
         "lists them.",
    429: "Per-key rate limit hit; Retry-After says when to retry.",
    500: "A bug; the message never leaks internals.",
    503: "Buffer full, store busy or shutting down; Retry-After set.",
    504: "options.timeout exceeded.",
}
def _pipeline_ref(extra: dict[str, Any] | None = None,
                  required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parameters naming one pipeline, by ``pipeline_id`` or ``name``."""
    properties = {"pipeline_id": PIPELINE_ID, "name": NAME, **(extra or {})}
    return {"type": "object", "properties": properties,
            "anyOf": [{"required": ["pipeline_id", *required]},
                      {"required": ["name", *required]}]}


def _operation_parameters() -> dict[str, dict[str, Any]]:
    no_parameters = {"type": "object"}
    event = EVENT
    dead_letter_filters = {
        "code": {"enum": list(REJECTION_CODES)}, "since": date_time(), "until": date_time(),
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
        "cursor": {"type": "string", "description": "next_cursor of the previous page"}}
    return {
        "create": obj({"name": NAME, "sql": {"type": "string", "minLength": 1},
                        "schema": {"type": "array", "minItems": 1, "items": ref("Field")},
                        "event_time_field": {"type": "string"}, "sink": ref("Sink"),
                        "runner": ref("Runner"),
                        "unknown_fields": {"enum": list(UNKNOWN_FIELD_POLICIES),
                                           "default": "drop"},
                        "dry_run": {"type": "boolean", "default": False},
                        "retention": ref("Retention")}, ("name",)),
        "get": _pipeline_ref(), "list": no_parameters, "pipeline": no_parameters,
        "delete": _pipeline_ref(), "start": _pipeline_ref(), "pause": _pipeline_ref(),
        "resume": _pipeline_ref(), "stop": _pipeline_ref(),
        "ingest": {**_pipeline_ref({"events": {"type": "array", "items": event},
                                    "event": event}),
                   "oneOf": [{"required": ["events"]}, {"required": ["event"]}]},
        # sql, schema (the whole new field list: only optional fields added) or both
        "transform": {**_pipeline_ref({"sql": {"type": "string", "minLength": 1},
                                       "schema": {"type": "array", "minItems": 1,
                                                  "items": ref("Field")},
                                       "dry_run": {"type": "boolean"},
                                       "limit": {"type": "integer", "minimum": 1,
                                                 "maximum": 10_000}}),
                      "allOf": [{"anyOf": [{"required": ["sql"]}, {"required": ["schema"]}]}]},
        "monitor": _pipeline_ref({"window_seconds": {"type": "number", "minimum": 1,
                                                     "maximum": 86_400}}),
        "logs": _pipeline_ref({"since": date_time(),
                               "level": {"enum": ["debug", "info", "warning", "error"]},
                               "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}),
        "versions": _pipeline_ref(), "whoami": no_parameters,
        "dead_letters": _pipeline_ref(dead_letter_filters),
        "replay_dead_letters": _pipeline_ref({
            **dead_letter_filters,
            "ids": {"type": "array", "minItems": 1, "maxItems": 1000,
                    "items": {"type": "integer", "minimum": 1}}}),
        # by ingest time (since, until) or by offsets, not both; sql or sql_version
        "replay": _pipeline_ref({
            "since": date_time(), "until": date_time(),
            "first_offset": {"type": "integer", "minimum": 1},
            "last_offset": {"type": "integer", "minimum": 1},
            "sql": {"type": "string", "minLength": 1},
            "sql_version": {"type": "integer", "minimum": 1},
            "target": obj({"prefix": {"type": "string", "minLength": 1, "description":
                                      "relative to the sink's parent folder, beside the sink"}},
                          ("prefix",), extra=False),
            "dry_run": {"type": "boolean"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
            "cancel": {"type": "string", "description": "a running replay's id: cancel it"}}),
    }


_DATA_BY_OPERATION = {
    "create": "Pipeline", "get": "Pipeline", "list": "PipelineList", "pipeline": "PipelineList",
    "delete": "Deleted", "start": "Pipeline", "pause": "Pipeline", "resume": "Pipeline",
    "stop": "Pipeline", "ingest": "IngestResult", "transform": "TransformResult",
    "monitor": "Monitor", "logs": "Logs", "versions": "Versions", "whoami": "WhoAmI",
    "dead_letters": "DeadLetters", "replay_dead_letters": "ReplayResult", "replay": "Replay",
}


def _headers(*names: str) -> dict[str, Any]:
    described = {
        "X-Request-ID": ("string", "The request's id, as in meta.requestId."),
        "X-RateLimit-Limit": ("integer", "Requests per minute allowed to the key (0: no limit)."),
        "X-RateLimit-Remaining": ("integer", "Requests left in the current minute."),
        "X-RateLimit-Reset": ("integer", "Unix seconds when the window resets."),
        "Retry-After": ("integer", "Seconds to wait before retrying."),
    }
    return {n: {"description": described[n][1], "schema": {"type": described[n][0]}}
            for n in names}


_COMMON_HEADERS = ("X-Request-ID", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                   "X-RateLimit-Reset")


def _success(data: dict[str, Any], description: str = "Success.") -> dict[str, Any]:
    return {"description": description, "headers": _headers(*_COMMON_HEADERS),
            "content": {"application/json": {"schema": obj(
                {"success": {"const": True}, "data": data, "meta": ref("Meta")},
                ("success", "data", "meta"))}}}


def _errors(*statuses: int) -> dict[str, Any]:
    out = {}
    for status in statuses:
        names = [*_COMMON_HEADERS, "Retry-After"] if status in (429, 503) else _COMMON_HEADERS
        out[str(status)] = {
            "description": f"{ERROR_CODES[status]}: {_ERROR_WHEN[status]}",
            "headers": _headers(*names),
            "content": {"application/json": {"schema": ref("ErrorEnvelope")}}}
    return out


_AUTHED = (400, 401, 403, 429, 500, 503)


def _idempotency_header() -> dict[str, Any]:
    return {"name": "X-Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            "description": "Same key and body within 24 h returns the stored response without "
                           "doing the work again; same key with another body is a 409."}


def _content_encoding_header() -> dict[str, Any]:
    return {"name": "Content-Encoding", "in": "header", "required": False,
            "schema": {"enum": list(ALLOWED_ENCODINGS)},
            "description": "The body may be compressed; the size limit applies to the decoded "
                           "body. Any other encoding is a 415."}


def _request_id_header() -> dict[str, Any]:
    return {"name": "X-Request-ID", "in": "header", "required": False,
            "schema": {"type": "string"},
            "description": "Echoed as meta.requestId (its first 128 characters); generated "
                           "(req_...) when absent or not printable."}


def _paths() -> dict[str, Any]:
    parameters = _operation_parameters()
    requests = []
    for name, (scope, _handler) in OPERATIONS.items():
        params = parameters[name]
        if name in ("list", "pipeline", "whoami"):
            params = {"type": ["object", "null"]}
        requests.append(obj({"operation": {"const": name}, "parameters": params,
                              "options": {"oneOf": [ref("Options"), {"type": "null"}]}},
                             ("operation",),
                             title=f"{name} (scope {scope})"))
    operation_table = "\n".join(f"- `{name}`: scope `{scope}`, data `{_DATA_BY_OPERATION[name]}`"
                                for name, (scope, _h) in OPERATIONS.items())
    headers = [_request_id_header(), _idempotency_header(), _content_encoding_header()]
    pipeline_ref = {"name": "ref", "in": "path", "required": True,
                    "description": "pipeline_id (pl_...) or name",
                    "schema": {"type": "string", "pattern": PIPELINE_NAME_PATTERN}}
    webhook_id = {"name": "webhook_id", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,40}$"}}
    data_any = {"anyOf": [ref(n) for n in sorted(set(_DATA_BY_OPERATION.values()))
                          ] + [ref("DryRunResult")]}
    return {
        "/pipeline": {"post": {
            "operationId": "pipelineOperation",
            "summary": "Run an operation on pipelines",
            "description": "One endpoint: an operation and its parameters.\n\n" + operation_table,
            "parameters": headers,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": requests,
                "discriminator": {"propertyName": "operation"}}}}},
            "responses": {"200": _success(data_any),
                          **_errors(*_AUTHED, 404, 409, 413, 415, 504)}}},
        "/pipelines/{ref}/events": {"post": {
            "operationId": "ingestEvents",
            "summary": "Fast ingest path (scope ingest)",
            "parameters": [pipeline_ref, *headers],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"oneOf": [
                    {"type": "array", "items": EVENT}, {"type": "object"}]}},
                "application/x-ndjson": {"schema": {
                    "description": "One JSON object per line; a bad line is rejected as a "
                                   "record, not the request."}}}},
            "responses": {"200": _success(ref("IngestResult")),
                          **_errors(*_AUTHED, 404, 409, 413, 415)}}},
        "/webhooks": {
            "post": {"operationId": "createWebhook", "summary": "Register a webhook (admin)",
                     "parameters": headers,
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": ref("WebhookRequest")}}},
                     "responses": {"200": _success(ref("Webhook")),
                                   **_errors(*_AUTHED, 409, 413, 415)},
                     "callbacks": {"event": {"{$request.body#/url}": {"post": {
                         "summary": "A webhook delivery",
                         "parameters": [{"name": "X-Webhook-Signature", "in": "header",
                                         "required": True, "schema": {"type": "string"},
                                         "description": "sha256=<hex HMAC-SHA256 of the raw "
                                                        "body with the secret>"}],
                         "requestBody": {"content": {"application/json": {
                             "schema": ref("WebhookEvent")}}},
                         "responses": {"2XX": {"description": "Delivered; anything else is "
                                                              "retried with backoff."}}}}}}},
            "get": {"operationId": "listWebhooks", "summary": "List webhooks (admin)",
                    "parameters": [_request_id_header()],
                    "responses": {"200": _success(ref("WebhookList")), **_errors(*_AUTHED)}}},
        "/webhooks/{webhook_id}": {
            "get": {"operationId": "getWebhook", "summary": "One webhook (admin)",
                    "parameters": [webhook_id],
                    "responses": {"200": _success(ref("Webhook")),
                                  **_errors(*_AUTHED, 404)}},
            "delete": {"operationId": "deleteWebhook", "summary": "Remove a webhook (admin)",
                       "parameters": [webhook_id],
                       "responses": {"200": _success(ref("Deleted")),
                                     **_errors(*_AUTHED, 404)}}},
        "/webhooks/{webhook_id}/deliveries": {"get": {
            "operationId": "listWebhookDeliveries",
            "summary": "The delivery log: deliveries with every attempt, newest first (admin)",
            "parameters": [webhook_id, {"name": "limit", "in": "query", "required": False,
                                        "schema": {"type": "integer", "minimum": 1,
                                                   "maximum": 500}}],
            "responses": {"200": _success(ref("DeliveryList")), **_errors(*_AUTHED, 404)}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus text format (scope read)",
            "responses": {"200": {"description": "The monitor counters of every pipeline.",
                                  "headers": _headers(*_COMMON_HEADERS),
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(*_AUTHED)}}},
        "/healthz": {"get": {
            "operationId": "health", "security": [],
            "summary": "200 once the server is ready; 503 with the reason while the store "
                       "does not answer or the job manager is broken",
            "responses": {"200": _success(obj({"status": {"const": "ok"}}, ("status",))),
                          **_errors(503)}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {
                                      "schema": {"type": "object"}}}}}}},
    }


def build_spec(server_url: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "pipeline.do", "version": "1.0.0",
                 "description": "Stream events over HTTP, transform them with DuckDB SQL, land "
                                "them as Parquet. Every reply is the envelope {success, data | "
                                "error, meta}."},
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API key (pdo_...)."}},
            "schemas": component_schemas()},
    }
    if server_url:
        spec["servers"] = [{"url": server_url}]
    return spec


@bp.get("/openapi.json")
def openapi_document():  # type: ignore[no-untyped-def]
    spec = current_app.extensions.get("pdo_openapi")
    if spec is None:
        spec = current_app.extensions["pdo_openapi"] = json.dumps(build_spec(), indent=1)
    return Response(spec, mimetype="application/json")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


if __name__ == "__main__":
    json.dump(build_spec(), sys.stdout, indent=2)
    sys.stdout.write("\n")
