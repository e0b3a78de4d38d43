"""Webhook routes: ``POST/GET/DELETE /webhooks`` and the delivery log."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from flask import Blueprint, Flask, request
from sqlalchemy import delete, select

from beam_pipelines.catalog.store import Store
from beam_pipelines.model.times import iso
from control_api import context
from control_api.auth import require_scope
from control_api.errors import ApiError, envelope, validation_error
from control_api.gate import admit, json_body
from control_api.tables import Webhook, WebhookAttempt, WebhookDelivery, WebhookEvent
from control_api.webhooks.events import EVENT_TYPES
from control_api.webhooks.url_guard import UnsafeUrl, check_url

__all__ = ["bp", "init_app"]

_MAX_URL_CHARS = 2048
_MAX_WEBHOOKS = 100

bp = Blueprint("webhooks", __name__)


def _public(hook: Webhook) -> dict[str, Any]:
    return {"id": hook.id, "url": hook.url, "events": json.loads(hook.events),
            "created_at": iso(hook.created_at)}


def _parse_events(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise validation_error("events", "events must be a non-empty array of event types: "
                               "allowed " + ", ".join(EVENT_TYPES))
    for i, item in enumerate(raw):
        if item not in EVENT_TYPES:
            raise ApiError(400, "VALIDATION_ERROR", f"unknown event type {item!r}: allowed "
                           + ", ".join(EVENT_TYPES), {"field": f"events[{i}]"})
    return list(dict.fromkeys(raw))


@bp.post("/webhooks")
def create_webhook():  # type: ignore[no-untyped-def]
    require_scope(admit(), "admin", "create webhook")
    body = json_body()
    if not isinstance(body, dict):
        raise validation_error("body", "the body must be an object {url, events, secret}")
    url = body.get("url")
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        raise validation_error("url", f"url must be an http(s) URL of at most {_MAX_URL_CHARS} "
                               "characters")
    events = _parse_events(body.get("events"))
    secret = body.get("secret")
    generated = secret is None
    if generated:
        secret = "whsec_" + secrets.token_urlsafe(24)
    if not isinstance(secret, str) or not 8 <= len(secret) <= 256:
        raise validation_error("secret", "secret must be a string of 8 to 256 characters")
    try:
        check_url(url, allow_private=context.settings().webhook_allow_private)
    except UnsafeUrl as err:
        raise validation_error("url", str(err)) from None
    store: Store = context.store()
    with store.session() as s:
        if len(s.scalars(select(Webhook.id)).all()) >= _MAX_WEBHOOKS:
            raise ApiError(409, "CONFLICT", f"at most {_MAX_WEBHOOKS} webhooks may exist; "
                           "delete one first", {"limit": _MAX_WEBHOOKS})
        hook = Webhook(id="wh_" + secrets.token_hex(8), url=url, events=json.dumps(events),
                       secret=secret, created_at=time.time())
        s.add(hook)
        public = _public(hook)
    if generated:
        public["secret"] = secret  # shown this once
    return envelope(public)


@bp.get("/webhooks")
def list_webhooks():  # type: ignore[no-untyped-def]
    require_scope(admit(), "admin", "list webhooks")
    with context.store().reading() as s:
        hooks = s.scalars(select(Webhook).order_by(Webhook.created_at)).all()
        return envelope({"webhooks": [_public(h) for h in hooks]})


def _hook(s: Any, webhook_id: str) -> Webhook:
    hook = s.get(Webhook, webhook_id)
    if hook is None:
        raise ApiError(404, "NOT_FOUND", f"no webhook {webhook_id!r}", {"webhook": webhook_id})
    return hook  # type: ignore[no-any-return]


@bp.get("/webhooks/<webhook_id>")
def get_webhook(webhook_id: str):  # type: ignore[no-untyped-def]
    require_scope(admit(), "admin", "get webhook")
    with context.store().reading() as s:
        return envelope(_public(_hook(s, webhook_id)))


@bp.delete("/webhooks/<webhook_id>")
def delete_webhook(webhook_id: str):  # type: ignore[no-untyped-def]
    require_scope(admit(), "admin", "delete webhook")
    with context.store().session() as s:
        hook = _hook(s, webhook_id)
        delivery_ids = select(WebhookDelivery.id).where(WebhookDelivery.webhook_id == hook.id)
        s.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(delivery_ids)))
        s.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id))
        s.delete(hook)
    return envelope({"deleted": True})


@bp.get("/webhooks/<webhook_id>/deliveries")
def list_deliveries(webhook_id: str):  # type: ignore[no-untyped-def]
    """The delivery log: each delivery with every attempt, newest first."""
    require_scope(admit(), "admin", "list webhook deliveries")
    limit = request.args.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        raise validation_error("limit", "limit must be an integer from 1 to 500")
    with context.store().reading() as s:
        _hook(s, webhook_id)
        rows = s.execute(
            select(WebhookDelivery, WebhookEvent.event_id, WebhookEvent.type)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc()).limit(int(limit))).all()
        attempts: dict[int, list[dict[str, Any]]] = {}
        ids = [d.id for d, _, _ in rows]
        for a in s.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids))
                           .order_by(WebhookAttempt.id)):
            attempts.setdefault(a.delivery_id, []).append({
                "attempt": a.attempt, "at": iso(a.attempted_at), "status_code": a.status_code,
                "error": a.error, "duration_ms": a.duration_ms})
        deliveries = [{
            "id": d.id, "event_id": event_id, "type": event_type, "status": d.status,
            "attempts": d.attempts, "last_status_code": d.last_status_code,
            "last_error": d.last_error, "created_at": iso(d.created_at),
            "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
            "delivered_at": iso(d.delivered_at), "log": attempts.get(d.id, [])}
            for d, event_id, event_type in rows]
    return envelope({"deliveries": deliveries})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
