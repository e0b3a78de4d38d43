"""The OpenAPI document's component schemas and the helpers that build schemas.

:mod:`control_api.openapi` builds the paths and serves the document; the
schemas (envelopes, definition pieces, operation results) are here.
"""

from __future__ import annotations

from typing import Any

from beam_pipelines.errors import EPOCH_ERROR_CODES
from beam_pipelines.model.definition import (
    FIELD_NAME_PATTERN,
    FIELD_TYPES,
    PIPELINE_NAME_PATTERN,
    RUNNER_TYPES,
    UNKNOWN_FIELD_POLICIES,
)
from beam_pipelines.model.lifecycle import STATUSES
from beam_pipelines.model.sink import SINK_OPTIONS
from control_api.webhooks.events import EVENT_TYPES
from transforms.decode import REJECTION_CODES
from transforms.formats import FILE_FORMATS

__all__ = ["ERROR_CODES", "EVENT", "NAME", "PIPELINE_ID", "REF", "component_schemas", "date_time",
           "obj", "ref"]

ERROR_CODES = {
    400: "VALIDATION_ERROR", 401: "AUTHENTICATION_ERROR", 403: "AUTHORIZATION_ERROR",
    404: "NOT_FOUND", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR", 503: "SERVICE_UNAVAILABLE", 504: "TIMEOUT",
}
REF = "#/components/schemas/"
PIPELINE_ID = {"type": "string", "pattern": "^pl_[0-9a-f]{1,37}$", "maxLength": 40}
NAME = {"type": "string", "pattern": PIPELINE_NAME_PATTERN}
# An event is an object; anything else is rejected as a record (200, "rejected"), not as
# the request, so the schema cannot narrow it.
EVENT = {"description": "an event object"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (),
         extra: bool = True, **more: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **more}
    if required:
        schema["required"] = list(required)
    if not extra:
        schema["additionalProperties"] = False
    return schema


def date_time(nullable: bool = False) -> dict[str, Any]:
    return {"type": ["string", "null"] if nullable else "string", "format": "date-time"}


def component_schemas() -> dict[str, Any]:
    """``components.schemas``: every schema the paths refer to by ``ref(name)``."""
    compressions = sorted({c for f in FILE_FORMATS.values() for c in f.compressions})
    number = {"type": "number"}
    integer = {"type": "integer", "minimum": 0}
    latency = {"type": ["number", "null"]}
    unreported = {"type": ["integer", "null"], "minimum": 0}
    return {
        "Meta": obj({"requestId": {"type": "string"}, "timestamp": date_time(),
                      "duration": {"type": "integer", "minimum": 0}},
                     ("requestId", "timestamp")),
        "Error": obj({"code": {"enum": sorted(set(ERROR_CODES.values()))},
                       "message": {"type": "string"},
                       "details": {"type": "object"}}, ("code", "message")),
        "ErrorEnvelope": obj({"success": {"const": False}, "error": ref("Error"),
                               "meta": ref("Meta")}, ("success", "error", "meta")),
        "Options": obj({
            "timeout": {"type": "integer", "minimum": 1, "maximum": 3_600_000,
                        "description": "Milliseconds of server-side work before TIMEOUT."},
            "retries": {"type": "integer", "minimum": 0, "maximum": 10,
                        "description": "Retries of a transient storage failure in the call."}}),
        "Field": obj({"name": {"type": "string", "pattern": FIELD_NAME_PATTERN},
                       "type": {"enum": list(FIELD_TYPES)}, "required": {"type": "boolean"}},
                      ("name", "type"), extra=False),
        "Roll": obj({"interval_seconds": {"type": "number", "minimum": 0.1, "maximum": 86400},
                      "max_bytes": {"type": "integer", "minimum": 1024, "maximum": 2**34},
                      "max_events": {"type": "integer", "minimum": 1, "maximum": 50_000_000}},
                     extra=False),
        "Sink": obj({
            "uri": {"type": "string", "description": "file:///path, gs://bucket/prefix or "
                    "s3://bucket/prefix; default <data dir>/lake/<name>. A local path must lie "
                    "under <data dir>/lake/ or PIPELINE_DO_LOCAL_SINK_ROOTS (400 otherwise)"},
            "format": {"enum": list(FILE_FORMATS)},
            "compression": {"enum": compressions},
            "partition_by": {"type": ["string", "null"],
                             "description": "e.g. dt=%Y-%m-%d/hour=%H or country={country}"},
            "roll": ref("Roll"),
            "options": obj({k: {"type": "string"} for k in SINK_OPTIONS}, extra=False,
                            description="Secrets are write-only: never echoed back."),
            "table": {"type": ["object", "null"],
                      "properties": {"catalog_uri": {"type": "string"},
                                     "namespace": {"type": "string"},
                                     "name": {"type": "string"}}}}, extra=False),
        "Runner": obj({"type": {"enum": list(RUNNER_TYPES)}, "options": {"type": "object"}},
                       extra=False),
        "Pipeline": obj({
            "id": {"type": "string"}, "name": {"type": "string"},
            "status": {"enum": list(STATUSES)},
            "version": {"type": "integer", "minimum": 1}, "sql": {"type": "string"},
            "schema": {"type": ["array", "null"], "items": ref("Field")},
            "event_time_field": {"type": ["string", "null"]},
            "unknown_fields": {"enum": list(UNKNOWN_FIELD_POLICIES)},
            "retention": ref("Retention"),
            "sink": {"type": "object"}, "runner": {"type": "object"},
            "created_at": date_time(), "updated_at": date_time()},
            ("id", "name", "status", "version", "sql", "schema", "event_time_field", "sink",
             "runner", "created_at", "updated_at")),
        # Committed events kept in the local buffer (for replay); neither set:
        # deleted once committed. Uncommitted events are never deleted.
        "Retention": obj({"seconds": {"type": ["number", "null"], "minimum": 0,
                                      "maximum": 366 * 86_400},
                          "bytes": {"type": ["integer", "null"], "minimum": 0,
                                    "maximum": 2**50}}, extra=False),
        "PipelineList": obj({"pipelines": {"type": "array", "items": ref("Pipeline")}},
                             ("pipelines",)),
        "Deleted": obj({"deleted": {"const": True}}, ("deleted",)),
        "IngestResult": obj({
            "accepted": integer,
            "rejected": {"type": "array", "items": obj({
                "index": integer, "code": {"enum": list(REJECTION_CODES)},
                "message": {"type": "string"}}, ("index", "code", "message"))},
            # Present when fields outside the schema were dropped (unknown_fields "drop").
            "unknown_fields": {"type": "array", "items": {"type": "string"}}},
            ("accepted", "rejected")),
        "OutputSchema": {"type": "array", "items": obj(
            {"name": {"type": "string"}, "type": {"type": "string"}}, ("name", "type"))},
        "TransformResult": obj({"version": {"type": "integer"},
                                 "output_schema": ref("OutputSchema")},
                                ("version", "output_schema")),
        "DryRunResult": obj({"dry_run": {"const": True}, "output_schema": ref("OutputSchema"),
                              "rows": {"type": "array", "items": {"type": "object"}}},
                             ("dry_run", "output_schema", "rows")),
        # null: a counter a distributed (Dataflow, Flink) job cannot report; never for direct.
        "Monitor": obj({
            "status": {"enum": list(STATUSES)}, "events_in": integer, "events_rejected": integer,
            "events_out": unreported, "bytes_in": integer, "bytes_out": unreported,
            "files_written": unreported, "epochs": unreported, "backlog_events": unreported,
            "throughput": obj({"in_eps": number, "out_eps": {"type": ["number", "null"]}},
                              ("in_eps", "out_eps")),
            "latency_ms": obj({"p50": latency, "p95": latency, "p99": latency},
                               ("p50", "p95", "p99")),
            "errors": integer, "last_error": {
                "type": ["string", "null"],
                "description": "The latest failed epoch attempt: 'epoch N failed (sink S): CODE: "
                               "reason (attempt a of n)', CODE one of "
                               + ", ".join(EPOCH_ERROR_CODES) + ". No server paths."},
            "last_commit_at": date_time(nullable=True), "window_seconds": number,
            "replays": {"type": "array", "items": ref("Replay")}},
            ("status", "events_in", "events_rejected", "events_out", "bytes_in", "bytes_out",
             "files_written", "epochs", "backlog_events", "throughput", "latency_ms", "errors",
             "last_error", "last_commit_at")),
        "File": obj({"path": {"type": "string"}, "rows": integer, "bytes": integer,
                      "epoch": integer, "min_event_time": date_time(nullable=True),
                      "max_event_time": date_time(nullable=True)}, ("path", "rows", "bytes")),
        "Logs": obj({"logs": {"type": "array", "items": obj({
            "timestamp": date_time(), "level": {"enum": ["debug", "info", "warning", "error"]},
            "message": {"type": "string"}, "epoch": {"type": ["integer", "null"]}},
            ("timestamp", "level", "message", "epoch"))}}, ("logs",)),
        "Versions": obj({"versions": {"type": "array", "items": obj({
            "version": integer, "sql": {"type": "string"}, "output_schema": ref("OutputSchema"),
            "schema": {"type": ["array", "null"], "items": ref("Field")},
            "created_at": date_time()}, ("version", "sql", "output_schema", "created_at"))}},
            ("versions",)),
        "DeadLetters": obj({
            "dead_letters": {"type": "array", "items": obj({
                "id": {"type": "integer", "minimum": 1}, "index": integer,
                "code": {"enum": list(REJECTION_CODES)}, "message": {"type": "string"},
                "record": {"type": ["string", "null"]}, "received_at": date_time(),
                "rejected_at": date_time(), "attempts": {"type": "integer", "minimum": 1}},
                ("id", "code", "message", "record", "rejected_at"))},
            "next_cursor": {"type": ["string", "null"]}}, ("dead_letters", "next_cursor")),
        "ReplayResult": obj({
            "accepted": integer,
            "rejected": {"type": "array", "items": obj({
                "id": {"type": "integer", "minimum": 1},
                "code": {"enum": list(REJECTION_CODES)}, "message": {"type": "string"}},
                ("id", "code", "message"))}}, ("accepted", "rejected")),
        "Replay": obj({
            "id": {"type": "string"}, "status": {"enum": ["running", "done", "failed", "cancelled"]},
            "range": obj({"first_offset": integer, "last_offset": integer,
                          "since": date_time(nullable=True), "until": date_time(nullable=True)},
                         ("first_offset", "last_offset")),
            "sql_version": {"type": ["integer", "null"]},
            "target": obj({"prefix": {"type": ["string", "null"]}, "uri": {"type": "string"}},
                          ("prefix", "uri")),
            "epochs_done": integer, "epochs_total": integer, "events_done": integer,
            "events_total": integer, "rows_out": integer, "files_written": integer,
            "last_error": {"type": ["string", "null"]}, "created_at": date_time(),
            "finished_at": date_time(nullable=True)},
            ("id", "status", "range", "target", "epochs_done", "epochs_total", "events_done",
             "events_total")),
        "WhoAmI": obj({"scope": {"enum": ["admin", "ingest", "read"]},
                       "key_prefix": {"type": "string"},
                       "operations": {"type": "array", "items": {"type": "string"}}},
                      ("scope", "key_prefix", "operations")),
        "EventType": {"enum": list(EVENT_TYPES)},
        "WebhookRequest": obj({
            "url": {"type": "string", "format": "uri", "maxLength": 2048},
            "events": {"type": "array", "minItems": 1, "items": ref("EventType")},
            "secret": {"type": "string", "minLength": 8, "maxLength": 256,
                       "description": "HMAC-SHA256 key; generated and shown once if absent"}},
            ("url", "events")),
        "Webhook": obj({"id": {"type": "string"}, "url": {"type": "string"},
                         "events": {"type": "array", "items": ref("EventType")},
                         "created_at": date_time(), "secret": {"type": "string"}},
                        ("id", "url", "events")),
        "WebhookList": obj({"webhooks": {"type": "array", "items": ref("Webhook")}},
                            ("webhooks",)),
        "DeliveryList": obj({"deliveries": {"type": "array", "items": obj({
            "id": {"type": "integer"}, "event_id": {"type": "string"},
            "type": ref("EventType"),
            "status": {"enum": ["pending", "delivered", "failed"]}, "attempts": integer,
            "last_status_code": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]}, "created_at": date_time(),
            "next_attempt_at": date_time(nullable=True), "delivered_at": date_time(nullable=True),
            "log": {"type": "array", "items": obj({
                "attempt": {"type": "integer"}, "at": date_time(),
                "status_code": {"type": ["integer", "null"]},
                "error": {"type": ["string", "null"]}, "duration_ms": integer})}},
            ("id", "event_id", "type", "status", "attempts"))}}, ("deliveries",)),
        "WebhookEvent": obj({"id": {"type": "string"}, "type": ref("EventType"),
                              "created_at": date_time(), "data": {"type": "object"}},
                             ("id", "type", "created_at", "data")),
    }
