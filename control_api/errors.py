"""The reply envelope and the one place where errors become HTTP codes.

Every endpoint answers ``{"success", "data" | "error", "meta"}``. An
``ApiError`` carries status, code, message and details; data-plane errors
(``beam_pipelines.errors``) are mapped onto it here, and anything else is
a 500 whose reply says nothing of the internals (the log has them).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Request, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from beam_pipelines.errors import (
    ConflictError,
    DefinitionError,
    NotFoundError,
    PipelineDoError,
    StorageError,
    TimeoutExceeded,
    Unavailable,
)

__all__ = ["ApiError", "domain_error", "envelope", "error_envelope", "init_app", "payload_too_large",
           "start_request", "tag_response", "unexpected_error", "unsupported_media_type",
           "validation_error"]

_log = logging.getLogger("pipeline_do.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def validation_error(field: str, message: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", message, {"field": field})


def payload_too_large(limit: int, *, decoded: bool = False) -> ApiError:
    """The body (or, for a compressed body, what it decodes to) passed ``limit`` bytes."""
    what = "decoded request body" if decoded else "request body"
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"{what} is over the limit of {limit} bytes "
                    "(PIPELINE_DO_MAX_BODY_BYTES)", {"field": "body", "limit_bytes": limit})


def unsupported_media_type(message: str, field: str, allowed: list[str]) -> ApiError:
    return ApiError(415, "UNSUPPORTED_MEDIA_TYPE", message, {"field": field, "allowed": allowed})


_MAPPING: list[tuple[type[PipelineDoError], int, str]] = [
    (DefinitionError, 400, "VALIDATION_ERROR"),
    (NotFoundError, 404, "NOT_FOUND"),
    (ConflictError, 409, "CONFLICT"),
    (TimeoutExceeded, 504, "TIMEOUT"),
    (Unavailable, 503, "SERVICE_UNAVAILABLE"),
    (StorageError, 503, "SERVICE_UNAVAILABLE"),
]


def _meta() -> dict[str, Any]:
    return {"requestId": getattr(g, "request_id", None) or _new_request_id(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z")}


def _new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:20]


def envelope(data: Any) -> Response:
    meta = _meta()
    started = getattr(g, "started", None)
    if started is not None:
        meta["duration"] = int((time.perf_counter() - started) * 1000)
    return jsonify({"success": True, "data": data, "meta": meta})


def error_envelope(err: ApiError) -> Response:
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.details:
        error["details"] = err.details
    response = jsonify({"success": False, "error": error, "meta": _meta()})
    response.status_code = err.status
    for name, value in err.headers.items():
        response.headers[name] = value
    return response


def to_api_error(err: PipelineDoError) -> ApiError:
    for kind, status, code in _MAPPING:
        if isinstance(err, kind):
            headers = {"Retry-After": "5"} if status == 503 else {}
            return ApiError(status, code, err.message, err.details, headers)
    return ApiError(500, "INTERNAL_ERROR", "internal error; see the server log "
                    f"for request {getattr(g, 'request_id', '')}")


def start_request(req: Request = request) -> None:
    """Start the clock and pick the request id (the client's ``X-Request-ID`` when it
    is usable). ``req`` is Flask's request unless the lean ingest path passes its own."""
    g.started = time.perf_counter()
    supplied = req.headers.get("X-Request-ID", "")
    g.request_id = supplied[:128] if supplied.isprintable() and supplied else _new_request_id()


def tag_response(response: Response) -> Response:
    response.headers["X-Request-ID"] = getattr(g, "request_id", "") or ""
    return response


def domain_error(err: PipelineDoError) -> Response:
    return error_envelope(to_api_error(err))


def unexpected_error(_err: Exception) -> Response:
    """A 500 that names only the request id; the log has the error."""
    _log.exception("request %s failed", getattr(g, "request_id", "?"))
    return error_envelope(ApiError(500, "INTERNAL_ERROR", "internal error; see the server "
                                   f"log for request {getattr(g, 'request_id', '')}"))


def init_app(app: Flask) -> None:
    app.before_request(start_request)
    app.after_request(tag_response)
    app.register_error_handler(ApiError, error_envelope)
    app.register_error_handler(PipelineDoError, domain_error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_err: RequestEntityTooLarge) -> Response:
        return error_envelope(payload_too_large(app.config["MAX_CONTENT_LENGTH"]))

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        code = {401: "AUTHENTICATION_ERROR", 403: "AUTHORIZATION_ERROR", 404: "NOT_FOUND",
                405: "VALIDATION_ERROR", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE",
                415: "UNSUPPORTED_MEDIA_TYPE", 429: "RATE_LIMIT_EXCEEDED"} \
            .get(status, "VALIDATION_ERROR" if status < 500 else "INTERNAL_ERROR")
        message = {404: f"no route {request.path}",
                   405: f"method {request.method} is not allowed on {request.path}"} \
            .get(status, err.description or err.name)
        allowed = getattr(err, "valid_methods", None)  # a 405 must say what is (RFC 9110)
        allow = {"Allow": ", ".join(allowed)} if status == 405 and allowed else {}
        return error_envelope(ApiError(status, code, message, headers=allow))

    app.register_error_handler(Exception, unexpected_error)
