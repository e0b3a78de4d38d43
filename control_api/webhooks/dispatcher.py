"""The webhook dispatcher: a background thread of the ``serve`` process.

Each tick it (1) announces ``pipeline.ingested`` for pipelines whose
ingest totals moved, at most once per pipeline per ``ingested_interval``;
(2) fans new outbox events out into one delivery row per subscribed
webhook; (3) sends the deliveries that are due on a small thread pool.
A failed attempt (network error, timeout, non-2xx) is retried with
exponential backoff until ``max_attempts``; every attempt is recorded.

Nothing here runs on a request's path: ingest acknowledges without
waiting for any of it. Deliveries are leased in the store before they are
sent, so two dispatchers sharing one store never send the same attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from sqlalchemy import delete, or_, select

from beam_pipelines.catalog.store import PipelineRow, Store
from beam_pipelines.errors import NotFoundError
from beam_pipelines.model.times import iso
from beam_pipelines.runners.local.buffer import BufferHandles
from beam_pipelines.runners.local.periodic import PeriodicThread
from control_api.tables import (
    IngestAnnouncement,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from control_api.webhooks.outbox import new_event
from control_api.webhooks.url_guard import UnsafeUrl, check_url

__all__ = ["WebhookDispatcher", "sign"]

_log = logging.getLogger("pipeline_do.webhooks")
_EVENT_RETENTION_SECONDS = 7 * 86_400


def sign(secret: str, body: bytes) -> str:
    """The ``X-Webhook-Signature`` value: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Job:
    delivery_id: int
    attempt: int
    url: str
    secret: str
    event_id: str
    event_type: str
    body: bytes


class WebhookDispatcher:
    def __init__(self, store: Store, data_dir: str, *, allow_private: bool = False,
                 poll_seconds: float = 0.25, retry_base_seconds: float = 1.0,
                 retry_max_seconds: float = 900.0, max_attempts: int = 12,
                 ingested_interval: float = 10.0, request_timeout: float = 10.0,
                 senders: int = 4) -> None:
        self.store = store
        self.data_dir = data_dir
        self.allow_private = allow_private
        self.poll_seconds = poll_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.max_attempts = max_attempts
        self.ingested_interval = ingested_interval
        self.request_timeout = request_timeout
        self.senders = senders
        self._pool = ThreadPoolExecutor(senders, thread_name_prefix="webhook-send")
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._buffers = BufferHandles(data_dir)
        self._next_ingest_check = 0.0
        self._next_purge = 0.0
        self._loop = PeriodicThread("webhook-dispatcher", self.poll_seconds, self.tick, _log)
        self._http = threading.local()

    def start(self) -> None:
        self._loop.start()

    def close(self, timeout: float = 10.0) -> None:
        self._loop.stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._buffers.close()

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.announce_ingest(now)
        self.fan_out(now)
        self.send_due(now)
        if now >= self._next_purge:
            self._next_purge = now + 3600
            self._purge(now)

    # -- pipeline.ingested ----------------------------------------------------

    def announce_ingest(self, now: float) -> None:
        """Announce moved ingest totals: per pipeline at most once per interval."""
        if now < self._next_ingest_check:
            return
        self._next_ingest_check = now + min(1.0, self.ingested_interval)
        with self.store.reading() as s:
            if not any("pipeline.ingested" in json.loads(events)
                       for events in s.scalars(select(Webhook.events))):
                return
            pipelines = s.execute(select(PipelineRow.id, PipelineRow.name)).all()
            last = {a.pipeline_id: (a.events_in, a.events_rejected, a.announced_at)
                    for a in s.scalars(select(IngestAnnouncement))}
        self._buffers.keep_only(p for p, _ in pipelines)
        for pipeline_id, name in pipelines:
            events_in, rejected, announced_at = last.get(pipeline_id, (0, 0, None))
            if announced_at is not None and now - announced_at < self.ingested_interval:
                continue
            try:
                totals = self._buffers.get(pipeline_id).totals()
            except NotFoundError:
                continue
            if totals["events_in"] == events_in and totals["events_rejected"] == rejected:
                continue
            with self.store.session() as s:  # the event and the new baseline: one transaction
                s.add(new_event("pipeline.ingested", {
                    "id": pipeline_id, "name": name,
                    "accepted": totals["events_in"] - events_in,
                    "rejected": totals["events_rejected"] - rejected,
                    "events_in": totals["events_in"],
                    "events_rejected": totals["events_rejected"],
                    "since": iso(announced_at), "until": iso(now)}))
                row = s.get(IngestAnnouncement, pipeline_id)
                if row is None:
                    row = IngestAnnouncement(pipeline_id=pipeline_id)
                    s.add(row)
                row.events_in = totals["events_in"]
                row.events_rejected = totals["events_rejected"]
                row.announced_at = now

    # -- fan-out and delivery -------------------------------------------------

    def fan_out(self, now: float) -> None:
        """One delivery per (event, webhook subscribed to its type when it happened)."""
        with self.store.reading() as s:  # the write lock only when there is work
            if s.scalar(select(WebhookEvent.id).where(WebhookEvent.fanned_out.is_(False))
                        .limit(1)) is None:
                return
        with self.store.session() as s:
            events = s.scalars(select(WebhookEvent).where(WebhookEvent.fanned_out.is_(False))
                               .order_by(WebhookEvent.id).limit(500)).all()
            if not events:
                return
            hooks = [(h.id, set(json.loads(h.events)), h.created_at)
                     for h in s.scalars(select(Webhook))]
            for event in events:
                for hook_id, types, created_at in hooks:
                    if event.type in types and created_at <= event.created_at:
                        s.add(WebhookDelivery(webhook_id=hook_id, event_id=event.id,
                                              status="pending", attempts=0,
                                              next_attempt_at=now, created_at=now))
                event.fanned_out = True

    def send_due(self, now: float) -> None:
        with self._lock:
            free = self.senders * 2 - len(self._in_flight)
            busy = set(self._in_flight)
        if free <= 0:
            return
        jobs: list[_Job] = []
        lease = now + self.request_timeout * 2 + 30
        due = (WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
               or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now))
        with self.store.reading() as s:
            if s.scalar(select(WebhookDelivery.id).where(*due).limit(1)) is None:
                return
        with self.store.session() as s:
            query = (select(WebhookDelivery, WebhookEvent, Webhook)
                     .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                     .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                     .where(*due)
                     .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                     .limit(free + len(busy)))
            for delivery, event, hook in s.execute(query).all():
                if delivery.id in busy or len(jobs) >= free:
                    continue
                delivery.lease_until = lease
                body = json.dumps({"id": event.event_id, "type": event.type,
                                   "created_at": iso(event.created_at),
                                   "data": json.loads(event.data)}).encode()
                jobs.append(_Job(delivery.id, delivery.attempts + 1, hook.url, hook.secret,
                                 event.event_id, event.type, body))
        for job in jobs:
            with self._lock:
                self._in_flight.add(job.delivery_id)
            self._pool.submit(self._send, job)

    def _send(self, job: _Job) -> None:
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            check_url(job.url, allow_private=self.allow_private)
            response = self._session().post(
                job.url, data=job.body, timeout=(5.0, self.request_timeout),
                allow_redirects=False, headers={
                    "Content-Type": "application/json",
                    "User-Agent": "pipeline.do-webhooks/1",
                    "X-Webhook-Signature": sign(job.secret, job.body),
                    "X-Webhook-Id": job.event_id,
                    "X-Webhook-Event": job.event_type,
                    "X-Webhook-Delivery": str(job.delivery_id),
                    "X-Webhook-Attempt": str(job.attempt)})
            status_code = response.status_code
            response.close()
            if not 200 <= status_code < 300:
                error = f"receiver answered HTTP {status_code}"
        except UnsafeUrl as err:
            error = f"refused: {err}"
        except requests.RequestException as err:
            error = f"{type(err).__name__}: {str(err)[:300]}"
        except Exception as err:  # noqa: BLE001 - a delivery failure is recorded, never raised
            _log.exception("webhook delivery %s failed", job.delivery_id)
            error = f"{type(err).__name__}: {str(err)[:300]}"
        try:
            self._record(job, status_code, error, int((time.monotonic() - started) * 1000))
        except Exception:  # noqa: BLE001 - the lease expires and the attempt is made again
            _log.exception("could not record webhook delivery %s", job.delivery_id)
        finally:
            with self._lock:
                self._in_flight.discard(job.delivery_id)

    def _record(self, job: _Job, status_code: int | None, error: str | None,
                duration_ms: int) -> None:
        now = time.time()
        with self.store.session() as s:
            delivery = s.get(WebhookDelivery, job.delivery_id)
            if delivery is None:
                return  # the webhook was deleted meanwhile
            s.add(WebhookAttempt(delivery_id=delivery.id, attempt=job.attempt, attempted_at=now,
                                 status_code=status_code, error=error, duration_ms=duration_ms))
            delivery.attempts = job.attempt
            delivery.last_status_code = status_code
            delivery.last_error = error
            delivery.lease_until = None
            if error is None:
                delivery.status = "delivered"
                delivery.delivered_at = now
            elif job.attempt >= self.max_attempts:
                delivery.status = "failed"
            else:
                delay = min(self.retry_max_seconds,
                            self.retry_base_seconds * 2 ** (job.attempt - 1))
                delivery.next_attempt_at = now + delay * random.uniform(1.0, 1.1)
        if error is not None:
            _log.info("webhook delivery %s attempt %s failed: %s", job.delivery_id, job.attempt,
                      error)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._http, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # never route deliveries through an environment proxy
            self._http.session = session
        return session

    def _purge(self, now: float) -> None:
        """Forget events (and their deliveries) older than the retention time."""
        horizon = now - _EVENT_RETENTION_SECONDS
        with self.store.session() as s:
            old = select(WebhookEvent.id).where(WebhookEvent.created_at < horizon)
            old_deliveries = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(old))
            s.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(old_deliveries)))
            s.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(old)))
            s.execute(delete(WebhookEvent).where(WebhookEvent.created_at < horizon))
            gone = select(PipelineRow.id)
            s.execute(delete(IngestAnnouncement).where(IngestAnnouncement.pipeline_id.not_in(gone)))
