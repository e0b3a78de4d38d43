"""Admission for every authenticated endpoint: key, rate limit, body.

``admit`` authenticates the bearer key and counts the request against the
key's per-minute limit; the rate-limit headers go on every response, the
ones turned away included.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy.exc
from flask import Flask, Request, Response, g, request

from beam_pipelines.errors import PipelineDoError, StorageError, TimeoutExceeded
from control_api import context
from control_api.auth import Principal, authenticate
from control_api.errors import ApiError, validation_error
from control_api.idempotency import claim
from transforms.json_depth import MAX_JSON_DEPTH, depth_exceeded

__all__ = ["add_rate_headers", "admit", "init_app", "json_body", "json_bytes", "malformed_json",
           "run_with_retries", "timeout_seconds"]

T = TypeVar("T")


def admit(req: Request = request) -> Principal:
    """``req`` is Flask's request unless the lean ingest path passes its own."""
    principal = authenticate(req)
    verdict = context.rate_limiter().hit(f"key:{principal.key_id}")
    g.rate_verdict = verdict
    if not verdict.allowed:
        raise ApiError(429, "RATE_LIMIT_EXCEEDED",
                       f"rate limit of {verdict.limit} requests per minute exceeded",
                       {"limit": verdict.limit, "reset": verdict.reset}, verdict.headers())
    claim(principal, req=req)  # X-Idempotency-Key: may answer from the store by raising
    return principal


def json_bytes(req: Request = request) -> bytes:
    """The request's (decoded, size-limited) body; a 400 when it is empty."""
    raw = req.get_data(cache=True)
    if not raw:
        raise validation_error("body", "the request body must be JSON")
    return raw


def malformed_json(err: Exception) -> ApiError:
    return validation_error("body", f"malformed JSON: {str(err)[:120]}")


def json_body() -> Any:
    raw = json_bytes()
    # Measured on the bytes before json.loads recurses (RecursionError past ~1000).
    if depth_exceeded(raw, MAX_JSON_DEPTH):
        raise validation_error("body", f"JSON nests deeper than {MAX_JSON_DEPTH} levels: "
                               f"allowed at most {MAX_JSON_DEPTH}")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise malformed_json(err) from None


def timeout_seconds(options: Any) -> float:
    default = context.settings().default_timeout_ms
    if options is None:
        return default / 1000.0
    if not isinstance(options, dict):
        raise validation_error("options", "options must be an object {timeout, retries}")
    timeout = options.get("timeout", default)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 1 <= timeout <= 3_600_000:
        raise validation_error("options.timeout", "options.timeout must be milliseconds "
                               "from 1 to 3600000")
    retries = options.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise validation_error("options.retries", "options.retries must be an integer "
                               "from 0 to 10")
    return float(timeout) / 1000.0


def run_with_retries(call: Callable[[], T], options: Any) -> T:
    """Run ``call``, retrying a transient storage failure ``options.retries`` times
    within ``options.timeout``; past the deadline the failure is a TIMEOUT."""
    retries = (options or {}).get("retries", 3)
    deadline = time.monotonic() + timeout_seconds(options)
    attempt = 0
    while True:
        try:
            return call()
        except (PipelineDoError, sqlite3.OperationalError, sqlalchemy.exc.OperationalError) as err:
            if isinstance(err, PipelineDoError) and not err.transient:
                raise
            delay = min(1.0, 0.05 * 2 ** attempt)
            if attempt >= retries:
                if not isinstance(err, PipelineDoError):
                    raise StorageError("the store is busy or failing; retry later") from err
                raise
            if time.monotonic() + delay > deadline:
                raise TimeoutExceeded("options.timeout ran out while retrying a transient "
                                      "storage failure", {"attempts": attempt + 1}) from err
            attempt += 1
            time.sleep(delay)


def add_rate_headers(response: Response) -> Response:
    """The rate-limit headers, on every response (an unauthenticated one shows the
    full allowance)."""
    verdict = getattr(g, "rate_verdict", None)
    if verdict is not None:
        for name, value in verdict.headers().items():
            response.headers[name] = value
    else:
        limit = context.settings().rate_limit
        now = int(time.time())
        response.headers["X-RateLimit-Limit"] = str(max(limit, 0))
        response.headers["X-RateLimit-Remaining"] = str(max(limit, 0))
        response.headers["X-RateLimit-Reset"] = str(now - now % 60 + 60)
    return response


def init_app(app: Flask) -> None:
    app.after_request(add_rate_headers)
