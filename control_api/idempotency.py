"""``X-Idempotency-Key``: a retried POST is answered from the store, not done twice.

The first request with a key claims it: a ``pending`` row keyed by
(API key, idempotency key) with a hash of method, path and body, inserted
under the store's write lock, so of two concurrent duplicates exactly one
claims and the other waits for its answer. When the claiming request is
answered, the response is stored with the row; for 24 hours the same key
and body get that stored response back (``Idempotent-Replayed: true``),
and the same key with another body is a 409.

Responses that say "try again" (429 and 5xx) are not stored: the claim
is dropped so a retry runs for real. A claim whose request died with its
process (``kill -9``) is taken over after ``_STALE_SECONDS``; until then a
retry waits and then gets a 409.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from flask import Flask, Request, Response, g, request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from beam_pipelines.catalog.store import Store
from control_api import context
from control_api.auth import Principal
from control_api.errors import ApiError, validation_error
from control_api.tables import IdempotencyRecord

__all__ = ["HEADER", "IdempotentReplay", "claim", "init_app", "record_response", "release_claim",
           "replay_response"]

HEADER = "X-Idempotency-Key"
TTL_SECONDS = 24 * 3600
# A pending claim older than this belonged to a request whose process died
# (an ingest takes seconds; a long ``stop`` repeated is only a 409).
_STALE_SECONDS = 300.0
_MAX_KEY_CHARS = 255


class IdempotentReplay(Exception):
    """Raised to answer a request with the response stored for its key."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"replay of a stored {status} response")
        self.status = status
        self.body = body


def _request_hash(req: Request) -> str:
    digest = hashlib.sha256()
    digest.update(f"{req.method} {req.path}\n".encode())
    digest.update(req.get_data(cache=True))
    return digest.hexdigest()


def claim(principal: Principal, wait_seconds: float | None = None,
          req: Request = request) -> None:
    """Claim the request's idempotency key, or answer it from the store (by raising).
    ``req`` is Flask's request unless the lean ingest path passes its own."""
    key = req.headers.get(HEADER)
    if key is None or req.method != "POST":
        return
    if not key or len(key) > _MAX_KEY_CHARS or not key.isprintable():
        raise validation_error(HEADER, f"{HEADER} must be 1 to {_MAX_KEY_CHARS} printable "
                               "characters")
    digest = _request_hash(req)
    store: Store = context.store()
    if wait_seconds is None:
        wait_seconds = context.settings().default_timeout_ms / 1000.0
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            stored = _claim_or_fetch(store, principal.key_id, key, digest)
        except IntegrityError:
            continue  # a concurrent claim won the insert (stores without BEGIN IMMEDIATE)
        if stored is None:
            g.idempotency_claim = (principal.key_id, key)
            return
        if stored[0] is not None:
            raise IdempotentReplay(stored[0], stored[1] or "")
        if time.monotonic() > deadline:
            raise ApiError(409, "CONFLICT", f"a request with this {HEADER} is still in progress; "
                           "retry later", {"field": HEADER})
        time.sleep(0.05)


def _claim_or_fetch(store: Store, key_id: int, key: str,
                    digest: str) -> tuple[int | None, str | None] | None:
    """None when this request now holds the claim, else the stored (status, body),
    with status None while the first request still runs."""
    now = time.time()
    with store.session() as s:
        record = s.scalars(select(IdempotencyRecord).where(
            IdempotencyRecord.api_key_id == key_id, IdempotencyRecord.key == key)).first()
        if record is not None and (
                record.created_at < now - TTL_SECONDS
                or (record.status == "pending" and record.created_at < now - _STALE_SECONDS)):
            s.delete(record)
            s.flush()
            record = None
        if record is None:
            s.execute(delete(IdempotencyRecord).where(
                IdempotencyRecord.created_at < now - TTL_SECONDS))
            s.add(IdempotencyRecord(api_key_id=key_id, key=key, request_hash=digest,
                                    status="pending", created_at=now))
            return None
        if not hmac.compare_digest(record.request_hash, digest):
            raise ApiError(409, "CONFLICT", f"this {HEADER} was already used with another "
                           "request; use a new key for a new request", {"field": HEADER})
        if record.status != "done":
            return (None, None)
        return (record.response_status, record.response_body)


def record_response(response: Response) -> Response:
    """Store the answer with the claimed key (or drop a claim a retry must redo)."""
    claimed = g.pop("idempotency_claim", None)
    if claimed is None:
        return response
    key_id, key = claimed
    store: Store = context.store()
    with store.session() as s:
        record = s.scalars(select(IdempotencyRecord).where(
            IdempotencyRecord.api_key_id == key_id, IdempotencyRecord.key == key)).first()
        if record is None:
            return response
        if response.status_code >= 500 or response.status_code == 429:
            s.delete(record)  # transient: a retry must run for real
        else:
            record.status = "done"
            record.response_status = response.status_code
            record.response_body = response.get_data(as_text=True)
    return response


def replay_response(replay: IdempotentReplay) -> Response:
    body: Any = replay.body
    try:
        parsed = json.loads(replay.body)
        if isinstance(parsed.get("meta"), dict):  # this request's id, as on every response
            parsed["meta"]["requestId"] = g.get("request_id")
        body = json.dumps(parsed)
    except (ValueError, AttributeError):
        pass
    response = Response(body, status=replay.status, mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    return response


def release_claim(_exc: BaseException | None = None) -> None:
    """A claim whose response never reached :func:`record_response`: let a retry run."""
    claimed = g.pop("idempotency_claim", None)
    if claimed is not None:
        with context.store().session() as s:
            s.execute(delete(IdempotencyRecord).where(
                IdempotencyRecord.api_key_id == claimed[0],
                IdempotencyRecord.key == claimed[1],
                IdempotencyRecord.status == "pending"))


def init_app(app: Flask) -> None:
    app.register_error_handler(IdempotentReplay, replay_response)
    app.after_request(record_response)
    app.teardown_request(release_claim)
