"""Webhooks: ``POST/GET/DELETE /webhooks`` and the outbox events are written to.

Whoever announces an event (the API processes, the job manager) only
inserts a row into the store's outbox (``webhook_events``), right after its
own transaction: cheap, and never waiting on a receiver. The dispatcher of
the ``serve`` process (:mod:`control_api.webhook_delivery`) turns each
row into one delivery per subscribed webhook and delivers it with retries.

A webhook URL must not reach into the server's own network: a host that
resolves to a private, loopback, link-local or otherwise reserved address
is refused, at registration and again at every delivery, unless
``PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE=1``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, request
from sqlalchemy import delete, select

from beam_pipelines.catalog.store import (
    PipelineRow,
    Store,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    iso,
)
from beam_pipelines.runners.local.epochs import EpochResult
from control_api.auth import require_scope
from control_api.errors import ApiError, envelope, validation_error
from control_api.gate import admit, json_body

__all__ = ["EVENT_TYPES", "Outbox", "UnsafeUrl", "bp", "check_url", "emit", "init_app", "new_event"]

_log = logging.getLogger("pipeline_do.webhooks")

EVENT_TYPES = ("pipeline.created", "pipeline.deleted", "pipeline.started", "pipeline.paused",
               "pipeline.resumed", "pipeline.stopped", "pipeline.ingested",
               "pipeline.transformed", "pipeline.written", "pipeline.failed")
_MAX_URL_CHARS = 2048
_MAX_WEBHOOKS = 100

bp = Blueprint("webhooks", __name__)


class UnsafeUrl(ValueError):
    """The URL is malformed or points somewhere a webhook must not go."""


def allow_private_from_env() -> bool:
    return os.environ.get("PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE", "").lower() in ("1", "true", "yes")


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that is not http(s) or whose host resolves to a non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"url scheme {parts.scheme or '(none)'!r} is not allowed: allowed http, https")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UnsafeUrl("url has an invalid port") from None
    if not host:
        raise UnsafeUrl("url has no host")
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeUrl(f"url host {host!r} does not resolve") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise UnsafeUrl(f"url host {host!r} resolves to {address}, a private, loopback, "
                            "link-local or reserved address; set "
                            "PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE=1 on the server to allow it")


# -- the outbox ---------------------------------------------------------------


def emit(store: Store, event_type: str, data: dict[str, Any]) -> None:
    """Append an event to the outbox; a failure is logged, never raised.

    Nothing is written while no webhook subscribes to the type: such an
    event could never be delivered (deliveries go only to webhooks that
    existed when the event happened).
    """
    try:
        with store.reading() as s:
            subscribed = any(event_type in json.loads(events)
                             for events in s.scalars(select(Webhook.events)))
        if not subscribed:
            return
        with store.session() as s:
            s.add(new_event(event_type, data))
    except Exception:  # noqa: BLE001 - announcing must never fail the operation announced
        _log.exception("could not record webhook event %s", event_type)


def new_event(event_type: str, data: dict[str, Any]) -> WebhookEvent:
    return WebhookEvent(event_id="evt_" + secrets.token_hex(10), type=event_type,
                        pipeline_id=data.get("id"), data=json.dumps(data, default=str),
                        created_at=time.time())


class Outbox:
    """The callbacks of ``PipelineService`` and ``JobManager``, writing to the outbox."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def on_event(self, event_type: str, data: dict[str, Any]) -> None:
        emit(self.store, event_type, data)

    def on_committed(self, result: EpochResult) -> None:
        name = self._name(result.pipeline_id)
        for f in result.files:
            emit(self.store, "pipeline.written", {
                "id": result.pipeline_id, "name": name, "epoch": result.epoch,
                "path": f["path"], "rows": f["rows"], "bytes": f["bytes"],
                "min_event_time": _iso_time(f.get("min_event_time")),
                "max_event_time": _iso_time(f.get("max_event_time"))})

    def on_stopped(self, pipeline_id: str) -> None:
        from beam_pipelines.service import summarize_stop

        emit(self.store, "pipeline.stopped", summarize_stop(self.store, pipeline_id))

    def on_failed(self, pipeline_id: str, epoch: int, message: str, attempts: int) -> None:
        """``pipeline.failed``: once, when the job manager makes the pipeline ``failed``."""
        emit(self.store, "pipeline.failed", {"id": pipeline_id, "name": self._name(pipeline_id),
                                             "epoch": epoch, "error": message,
                                             "attempts": attempts})

    def _name(self, pipeline_id: str) -> str | None:
        with self.store.reading() as s:
            return s.scalar(select(PipelineRow.name).where(PipelineRow.id == pipeline_id))


def _iso_time(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return iso(float(value))


# -- routes -------------------------------------------------------------------


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
        check_url(url, allow_private=current_app.config["WEBHOOK_ALLOW_PRIVATE"])
    except UnsafeUrl as err:
        raise validation_error("url", str(err)) from None
    store: Store = current_app.extensions["pdo_store"]
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
    with current_app.extensions["pdo_store"].reading() as s:
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
    with current_app.extensions["pdo_store"].reading() as s:
        return envelope(_public(_hook(s, webhook_id)))


@bp.delete("/webhooks/<webhook_id>")
def delete_webhook(webhook_id: str):  # type: ignore[no-untyped-def]
    require_scope(admit(), "admin", "delete webhook")
    with current_app.extensions["pdo_store"].session() as s:
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
    with current_app.extensions["pdo_store"].reading() as s:
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
    app.config.setdefault("WEBHOOK_ALLOW_PRIVATE", allow_private_from_env())
    app.register_blueprint(bp)
