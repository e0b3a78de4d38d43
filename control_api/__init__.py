"""The control API: a Flask app factory wiring settings, store, auth, routes and errors."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

__all__ = ["create_app"]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The API app. ``config`` overrides settings by upper-case name (``DATA_DIR``,
    ``RATE_LIMIT``, ...; see :class:`control_api.config.Settings`); other keys
    (``TESTING``) go to Flask's config as they are."""
    from beam_pipelines.catalog.store import Store
    from beam_pipelines.service import PipelineService
    from beam_pipelines.storage.sealing import SecretBox
    from control_api import (
        auth,
        bodies,
        console,
        context,
        errors,
        fastpath,
        gate,
        health,
        idempotency,
        ingest,
        metrics,
        openapi,
        operations,
        tables,
    )
    from control_api.config import load_settings
    from control_api.ratelimit import RateLimiter
    from control_api.webhooks import routes as webhook_routes
    from control_api.webhooks.outbox import Outbox

    settings = load_settings(config)
    app = Flask(__name__)
    app.config.update(config or {})
    app.config.update(settings.flask_config())
    os.makedirs(settings.data_dir, exist_ok=True)

    store = Store(settings.database_url)
    tables.create_all(store)
    outbox = Outbox(store)
    service = PipelineService(
        store, settings.data_dir, default_sink_uri=os.path.join(settings.data_dir, "lake", "{name}"),
        local_sink_roots=settings.local_sink_roots,
        secret_box=SecretBox.for_data_dir(settings.data_dir, settings.secret_key),
        on_event=outbox.on_event, events=outbox)
    limiter = RateLimiter(os.path.join(settings.data_dir, "ratelimit.sqlite"), settings.rate_limit)
    context.register(app, context.AppContext(settings, store, service, limiter))
    if settings.api_key:
        auth.ensure_key(store, settings.api_key, "admin")

    errors.init_app(app)
    bodies.init_app(app)
    auth.init_app(app)
    gate.init_app(app)
    health.init_app(app)
    operations.init_app(app)
    ingest.init_app(app)
    idempotency.init_app(app)
    webhook_routes.init_app(app)
    metrics.init_app(app)
    openapi.init_app(app)
    console.init_app(app)
    fastpath.init_app(app)
    return app
